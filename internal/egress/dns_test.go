package egress

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func query(t testing.TB, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x1234, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// edeText returns the Extended DNS Error of m, if any.
func edeText(m *dnsmessage.Message) (uint16, string, bool) {
	for _, r := range m.Additionals {
		opt, ok := r.Body.(*dnsmessage.OPTResource)
		if !ok {
			continue
		}
		for _, o := range opt.Options {
			if o.Code == ednsOptionEDE && len(o.Data) >= 2 {
				return binary.BigEndian.Uint16(o.Data), string(o.Data[2:]), true
			}
		}
	}
	return 0, "", false
}

func TestAnswerDNS(t *testing.T) {
	pol := mustPolicy(t, []string{"*.example.com:443"}, []string{"bad.example.com"})
	ips := NewFakeIPs(0)

	ans, rec := AnswerDNS(query(t, "Api.Example.com.", dnsmessage.TypeA), pol, ips, "v1", "agents")
	var m dnsmessage.Message
	if err := m.Unpack(ans); err != nil {
		t.Fatal(err)
	}
	if m.Header.ID != 0x1234 || !m.Header.Response || m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("allowed answer: %+v", m)
	}
	a := m.Answers[0].Body.(*dnsmessage.AResource).A
	addr := ips.Addr("api.example.com").As4()
	if a != addr || m.Answers[0].Header.TTL != DNSTTL || m.Questions[0].Name.String() != "Api.Example.com." {
		t.Fatalf("answer %v ttl %d, want %v", a, m.Answers[0].Header.TTL, addr)
	}
	if rec.Decision != DecisionAllow || rec.Name != "api.example.com" || rec.Rule != "*.example.com:443" || rec.Proto != "dns" || rec.Policy != "agents" {
		t.Fatalf("record %+v", rec)
	}

	ans, rec = AnswerDNS(query(t, "api.example.com.", dnsmessage.TypeAAAA), pol, ips, "v1", "agents")
	if err := m.Unpack(ans); err != nil {
		t.Fatal(err)
	}
	if m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 || rec.Decision != DecisionAllow {
		t.Fatalf("AAAA: %+v", m)
	}

	for _, denied := range []string{"bad.example.com.", "evil.test.", "example.com."} {
		ans, rec = AnswerDNS(query(t, denied, dnsmessage.TypeA), pol, ips, "v1", "agents")
		if err := m.Unpack(ans); err != nil {
			t.Fatal(err)
		}
		code, text, ok := edeText(&m)
		host := strings.TrimSuffix(denied, ".")
		if m.Header.RCode != dnsmessage.RCodeNameError || len(m.Answers) != 0 || !ok || code != edeBlocked {
			t.Fatalf("%s: rcode %v ede %v %d", denied, m.Header.RCode, ok, code)
		}
		if want := `banger egress: ` + host + ` is not allowed by policy "agents" of VM "v1"; allow it with: banger vm egress allow v1 ` + host; text != want {
			t.Fatalf("EDE text %q, want %q", text, want)
		}
		if rec.Decision != DecisionDeny || rec.Name != host {
			t.Fatalf("record %+v", rec)
		}
	}

	// A name no host can have: NXDOMAIN, and the record does not carry it as a name.
	ans, rec = AnswerDNS(query(t, "a\\032b.example.com.", dnsmessage.TypeA), pol, ips, "v1", "agents")
	if err := m.Unpack(ans); err != nil {
		t.Fatal(err)
	}
	if m.Header.RCode != dnsmessage.RCodeNameError || rec.Name != "" || rec.Decision != DecisionDeny {
		t.Fatalf("invalid name: %v %+v", m.Header.RCode, rec)
	}
}

func TestAnswerDNSMalformed(t *testing.T) {
	pol := mustPolicy(t, []string{"a.test"}, nil)
	ips := NewFakeIPs(0)
	if ans, rec := AnswerDNS([]byte{1, 2, 3}, pol, ips, "v", "p"); ans != nil || rec.Decision != DecisionDeny || rec.Note == "" {
		t.Fatalf("short: %v %+v", ans, rec)
	}
	// Two questions: FORMERR.
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7})
	_ = b.StartQuestions()
	q := dnsmessage.Question{Name: dnsmessage.MustNewName("a.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	_ = b.Question(q)
	_ = b.Question(q)
	two, _ := b.Finish()
	ans, _ := AnswerDNS(two, pol, ips, "v", "p")
	var m dnsmessage.Message
	if err := m.Unpack(ans); err != nil || m.Header.RCode != dnsmessage.RCodeFormatError || m.Header.ID != 7 {
		t.Fatalf("two questions: %v %v", err, m.Header)
	}
	if ips.Len() != 0 {
		t.Fatal("a malformed query mapped a name")
	}
}

func FuzzAnswerDNS(f *testing.F) {
	f.Add(query(f, "a.example.com.", dnsmessage.TypeA))
	f.Add(query(f, "evil.test.", dnsmessage.TypeA))
	f.Add(query(f, "a.example.com.", dnsmessage.TypeAAAA))
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	pol, _ := NewPolicy("p", []string{"*.example.com"}, []string{"x.example.com"})
	f.Fuzz(func(t *testing.T, q []byte) {
		ips := NewFakeIPs(4)
		ans, rec := AnswerDNS(q, pol, ips, "v1", "p")
		if ans == nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(ans); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		if rec.Decision == DecisionAllow && !pol.AllowsName(rec.Name) {
			t.Fatalf("allowed %q", rec.Name)
		}
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				if n, ok := ips.Name(netipFrom4(r.A)); !ok || !pol.AllowsName(n) {
					t.Fatalf("answered %v for a name the policy denies", r.A)
				}
			}
		}
	})
}

func netipFrom4(a [4]byte) netip.Addr { return netip.AddrFrom4(a) }

type dnsMsg = dnsmessage.Message
