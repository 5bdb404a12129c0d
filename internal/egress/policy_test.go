package egress

import (
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestParseRule(t *testing.T) {
	good := map[string]string{
		"api.example.com":     "api.example.com",
		"API.Example.COM.":    "api.example.com",
		"*.example.com":       "*.example.com",
		"github.com:443":      "github.com:443",
		"10.1.2.0/24":         "10.1.2.0/24",
		"10.1.2.3/24":         "10.1.2.0/24",
		"10.1.2.3":            "10.1.2.3",
		"10.1.2.3:22":         "10.1.2.3:22",
		"2001:db8::/32":       "2001:db8::/32",
		"2001:db8::1":         "2001:db8::1",
		"[2001:db8::1]:443":   "[2001:db8::1]:443",
		"[2001:db8::/32]:443": "[2001:db8::/32]:443",
		"_srv.example.com":    "_srv.example.com",
		" pypi.org ":          "pypi.org",
	}
	for in, want := range good {
		r, err := ParseRule(in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", in, err)
			continue
		}
		if r.String() != want {
			t.Errorf("ParseRule(%q) = %q, want %q", in, r.String(), want)
		}
		again, err := ParseRule(r.String())
		if err != nil || again != r {
			t.Errorf("ParseRule(%q) does not round-trip: %v %v", r.String(), again, err)
		}
	}
	bad := map[string]string{
		"":                  "empty",
		"*.":                `"*." needs a domain after it, as in "*.example.com"`,
		"*":                 `"*" may only start`,
		"a.*.com":           `"*" may only start`,
		"example.com:":      "missing port",
		"example.com:0":     "not a number from 1 to 65535",
		"example.com:99999": "not a number from 1 to 65535",
		"example.com:+1":    "not a number",
		"exa mple.com":      "has the character",
		"a..b":              "empty label",
		"[::1":              "missing ]",
		"[10.0.0.1]:80":     "brackets are for IPv6",
		"10.0.0.0/33":       "bad address range",
		":80":               "missing host",
		"[::1]80":           "only :PORT may follow ]",
		"fe80::1%eth0":      "zone",
	}
	for in, want := range bad {
		_, err := ParseRule(in)
		if err == nil {
			t.Errorf("ParseRule(%q) accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "valid patterns:") {
			t.Errorf("ParseRule(%q) error %q does not say %q and the valid forms", in, err, want)
		}
	}
}

func mustPolicy(t *testing.T, allow, deny []string) Policy {
	t.Helper()
	p, err := NewPolicy("test", allow, deny)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDecide(t *testing.T) {
	p := mustPolicy(t,
		[]string{"*.example.com", "api.example.org:443", "203.0.113.0/24", "[2001:db8::1]:22"},
		[]string{"bad.example.com", "203.0.113.7", "*.evil.example.com:80"})
	none := netip.Addr{}
	cases := []struct {
		name  string
		ip    string
		port  uint16
		allow bool
		rule  string
	}{
		{"a.example.com", "", 443, true, "*.example.com"},
		{"A.B.Example.Com.", "", 80, true, "*.example.com"},
		{"example.com", "", 443, false, ""},
		{"bad.example.com", "", 443, false, "bad.example.com"},
		{"x.evil.example.com", "", 80, false, "*.evil.example.com:80"},
		{"x.evil.example.com", "", 443, true, "*.example.com"},
		{"api.example.org", "", 443, true, "api.example.org:443"},
		{"api.example.org", "", 80, false, ""},
		{"", "203.0.113.5", 9999, true, "203.0.113.0/24"},
		{"", "203.0.113.7", 9999, false, "203.0.113.7"},
		{"a.example.com", "203.0.113.7", 443, false, "203.0.113.7"},
		{"", "2001:db8::1", 22, true, "[2001:db8::1]:22"},
		{"", "2001:db8::1", 23, false, ""},
		{"", "::ffff:203.0.113.5", 1, true, "203.0.113.0/24"},
		{"nothing.test", "", 443, false, ""},
	}
	for _, c := range cases {
		ip := none
		if c.ip != "" {
			ip = netip.MustParseAddr(c.ip)
		}
		d := p.Decide(c.name, ip, c.port)
		if d.Allow != c.allow || d.Rule != c.rule {
			t.Errorf("Decide(%q, %s, %d) = %v %q, want %v %q", c.name, c.ip, c.port, d.Allow, d.Rule, c.allow, c.rule)
		}
	}
	if !p.AllowsName("x.evil.example.com") {
		t.Error("a name denied on one port only should still resolve")
	}
	if p.AllowsName("bad.example.com") || p.AllowsName("example.com") || p.AllowsName("") {
		t.Error("AllowsName allowed a denied or uncovered name")
	}
}

func TestBuiltinPoliciesParse(t *testing.T) {
	for name, pats := range BuiltinPolicies {
		p, err := NewPolicy(name, pats, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range []string{"api.anthropic.com", "api.openai.com", "registry.npmjs.org", "github.com", "objects.githubusercontent.com", "deb.debian.org", "models.dev"} {
			if d := p.Decide(host, netip.Addr{}, 443); !d.Allow {
				t.Errorf("%s does not allow %s:443", name, host)
			}
		}
		if d := p.Decide("github.com", netip.Addr{}, 22); d.Allow {
			t.Errorf("%s allows github.com:22", name)
		}
	}
}

func TestNewPolicyJoinsErrors(t *testing.T) {
	_, err := NewPolicy("p", []string{"*.", "ok.com"}, []string{"a b"})
	if err == nil || !strings.Contains(err.Error(), `"*."`) || !strings.Contains(err.Error(), `"a b"`) {
		t.Fatalf("NewPolicy error = %v", err)
	}
}

func TestLearn(t *testing.T) {
	recs := []Record{
		{Proto: "tcp", Name: "api.example.com", Addr: "198.18.0.1", Port: 443, Decision: DecisionAllow},
		{Proto: "tcp", Name: "API.example.com.", Addr: "198.18.0.1", Port: 443, Decision: DecisionAllow},
		{Proto: "tcp", Name: "api.example.com", Port: 80, Decision: DecisionDeny},
		{Proto: "dns", Name: "api.example.com", Decision: DecisionAllow},
		{Proto: "dns", Name: "cdn.example.net", Decision: DecisionDeny},
		{Proto: "tcp", Addr: "203.0.113.9", Port: 22, Decision: DecisionDeny},
		{Proto: "tcp", Addr: "2001:db8::5", Port: 443, Decision: DecisionDeny},
		{Proto: "tcp", Addr: "198.18.3.3", Port: 443, Decision: DecisionDeny},
		{Proto: "tcp", Name: "exfil.example", Port: 443, Decision: DecisionLeak},
		{Proto: "tcp", Name: "", Addr: "", Port: 443},
	}
	got := Learn(recs)
	want := []string{"203.0.113.9:22", "[2001:db8::5]:443", "api.example.com:443", "api.example.com:80", "cdn.example.net"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Learn = %q, want %q", got, want)
	}
	if _, err := NewPolicy("learned", got, nil); err != nil {
		t.Fatalf("learned list does not parse: %v", err)
	}
}

func TestFakeIPs(t *testing.T) {
	f := NewFakeIPs(3)
	a := f.Addr("a.test")
	if !FakeRange.Contains(a) {
		t.Fatalf("%s not in the fake range", a)
	}
	if f.Addr("a.test") != a {
		t.Fatal("address not stable")
	}
	if n, ok := f.Name(a); !ok || n != "a.test" {
		t.Fatalf("Name(%s) = %q %v", a, n, ok)
	}
	b := f.Addr("b.test")
	f.Addr("c.test")
	f.Name(a) // a is now the most recent: b goes first
	f.Addr("d.test")
	if _, ok := f.Name(b); ok {
		t.Fatal("least recently used name was not evicted")
	}
	if n, _ := f.Name(a); n != "a.test" || f.Len() != 3 {
		t.Fatalf("table after eviction: a=%q len=%d", n, f.Len())
	}
	if f.Addr("b.test") == b {
		t.Fatal("an evicted address was reused at once")
	}

	big := NewFakeIPs(0)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				n := string(rune('a'+w)) + "x" + string(rune('a'+i%26)) + ".test"
				ad := big.Addr(n)
				if got, ok := big.Name(ad); !ok || got != n {
					t.Errorf("concurrent lookup of %s gave %q", n, got)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestFakeIPsWrap(t *testing.T) {
	f := NewFakeIPs(2)
	seen := map[netip.Addr]bool{}
	for i := 0; i < fakeSpan+5; i++ {
		a := f.Addr("n" + itoa(i) + ".test")
		if !FakeRange.Contains(a) || a == netip.MustParseAddr("198.18.0.0") || a == netip.MustParseAddr("198.19.255.255") {
			t.Fatalf("bad address %s", a)
		}
		seen[a] = true
	}
	if len(seen) != fakeSpan {
		t.Fatalf("used %d addresses, want the whole span %d", len(seen), fakeSpan)
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"api.example.com", "*.example.com", "github.com:443", "10.0.0.0/8", "[2001:db8::1]:443",
		"2001:db8::/32", "*.", "*", "a..b", "[::1", ":80", "x:65536", "A.B.", "::ffff:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			return
		}
		again, err := ParseRule(r.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", r.String(), s, err)
		}
		if again != r {
			t.Fatalf("%q: %+v != %+v", s, again, r)
		}
		if (r.Host == "") == !r.Prefix.IsValid() {
			t.Fatalf("%q is both or neither a name and a range: %+v", s, r)
		}
		if r.Host != "" && NormalizeName(r.Host) != r.Host && !strings.Contains(r.Host, "_") {
			// A host rule's name is the normalized form (address literals aside).
			if _, err := netip.ParseAddr(r.Host); err == nil {
				t.Fatalf("%q parsed as a name rule for an address", s)
			}
		}
	})
}
