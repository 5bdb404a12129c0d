package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentapi"
)

// fakeResolver answers from its map and fails everything else, so no
// test ever looks a real name up.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("no such host %s (test resolver)", host)
}

type testGW struct {
	t    *testing.T
	g    *Gateway
	recs chan Record
}

func newTestGW(t *testing.T, pol Policy, tweak func(*Options)) *testGW {
	t.Helper()
	tg := &testGW{t: t, recs: make(chan Record, 16)}
	opts := Options{
		Policy:       func(string) (Policy, string, bool) { return pol, "agents", true },
		Record:       func(r Record) { tg.recs <- r },
		Resolver:     fakeResolver{},
		SniffTimeout: 300 * time.Millisecond,
		DialTimeout:  2 * time.Second,
	}
	if tweak != nil {
		tweak(&opts)
	}
	tg.g = New(opts)
	return tg
}

// tcpPair returns two ends of a loopback TCP connection (they can
// half-close, as the agent's streams can).
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// open starts Handle on a new stream and writes the open line and first
// bytes; it returns the guest's end.
func (tg *testGW) open(o agentapi.EgressOpen, first string) (net.Conn, *bufio.Reader) {
	tg.t.Helper()
	guest, host := tcpPair(tg.t)
	go tg.g.Handle(context.Background(), VMRef{ID: "id1", Name: "v1"}, host)
	if err := agentapi.WriteEgressLine(guest, o); err != nil {
		tg.t.Fatal(err)
	}
	if first != "" {
		if _, err := io.WriteString(guest, first); err != nil {
			tg.t.Fatal(err)
		}
	}
	_ = guest.SetDeadline(time.Now().Add(10 * time.Second))
	return guest, bufio.NewReader(guest)
}

func readReply(t *testing.T, br *bufio.Reader) agentapi.EgressReply {
	t.Helper()
	var r agentapi.EgressReply
	if err := agentapi.ReadEgressLine(br, &r); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return r
}

func (tg *testGW) record() Record {
	tg.t.Helper()
	select {
	case r := <-tg.recs:
		select {
		case extra := <-tg.recs:
			tg.t.Fatalf("a second record: %+v", extra)
		case <-time.After(50 * time.Millisecond):
		}
		return r
	case <-time.After(10 * time.Second):
		tg.t.Fatal("no record")
	}
	return Record{}
}

// upstream is a fake server on 127.0.0.1: it says banner first (if
// any), then echoes what it reads, upper-cased, until EOF.
type upstream struct {
	addr    string
	port    uint16
	accepts atomic.Int32
	got     chan []byte
}

func newUpstream(t *testing.T, banner string) *upstream {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	u := &upstream{addr: l.Addr().String(), got: make(chan []byte, 4)}
	u.port = uint16(l.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u.accepts.Add(1)
			go func() {
				defer c.Close()
				if banner != "" {
					_, _ = io.WriteString(c, banner)
				}
				b, _ := io.ReadAll(c)
				u.got <- b
				_, _ = c.Write(bytes.ToUpper(b))
			}()
		}
	}()
	return u
}

func TestGatewayAllowFakeIP(t *testing.T) {
	up := newUpstream(t, "")
	tg := newTestGW(t, mustPolicy(t, []string{"up.example:443"}, nil), func(o *Options) {
		o.Resolve = map[string]string{"UP.example": up.addr}
	})
	fake := tg.g.FakeIPs("id1").Addr("up.example")
	guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":443", PID: 42, Process: "curl", Session: "s1"}, "")
	if r := readReply(t, br); !r.Allow {
		t.Fatalf("denied: %+v", r)
	}
	payload := strings.Repeat("hello ", 10000)
	if _, err := io.WriteString(guest, payload); err != nil {
		t.Fatal(err)
	}
	_ = guest.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if string(back) != strings.ToUpper(payload) {
		t.Fatalf("got %d bytes back", len(back))
	}
	rec := tg.record()
	if rec.Decision != DecisionAllow || rec.Name != "up.example" || rec.Addr != fake.String() || rec.Port != 443 ||
		rec.Rule != "up.example:443" || rec.BytesUp != int64(len(payload)) || rec.BytesDown != int64(len(payload)) ||
		rec.Session != "s1" || rec.Process != "curl" || rec.PID != 42 || rec.VM != "v1" || rec.VMID != "id1" ||
		rec.Policy != "agents" || rec.Proto != "tcp" || rec.Duration <= 0 {
		t.Fatalf("record %+v", rec)
	}
}

func TestGatewayAllowSniffedHTTP(t *testing.T) {
	up := newUpstream(t, "")
	tg := newTestGW(t, mustPolicy(t, []string{"*.example.org"}, nil), func(o *Options) {
		o.Resolve = map[string]string{"www.example.org:80": up.addr}
	})
	// The guest's own address (TEST-NET-3) is never dialed: the gateway
	// dials the checked name.
	req := "GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
	guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.80:80"}, req)
	if r := readReply(t, br); !r.Allow {
		t.Fatalf("denied: %+v", r)
	}
	_ = guest.(*net.TCPConn).CloseWrite()
	if got := <-up.got; string(got) != req {
		t.Fatalf("upstream got %q: the peeked bytes were not replayed", got)
	}
	back, _ := io.ReadAll(br)
	if string(back) != strings.ToUpper(req) {
		t.Fatalf("guest got %q", back)
	}
	if rec := tg.record(); rec.Name != "www.example.org" || rec.Addr != "203.0.113.80" || rec.BytesUp != int64(len(req)) {
		t.Fatalf("record %+v", rec)
	}
}

func TestGatewayDenyHTTP(t *testing.T) {
	tg := newTestGW(t, mustPolicy(t, []string{"ok.example"}, nil), nil)
	guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.9:80"}, "GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n")
	defer guest.Close()
	want := `banger egress: evil.example:80 is not allowed by policy "agents" of VM "v1"; allow it with: banger vm egress allow v1 evil.example`
	if r := readReply(t, br); r.Allow || r.Message != want {
		t.Fatalf("reply %+v", r)
	}
	rest, _ := io.ReadAll(br)
	if !strings.HasPrefix(string(rest), "HTTP/1.1 403 Forbidden\r\n") || !strings.HasSuffix(string(rest), "\r\n\r\n"+want+"\n") {
		t.Fatalf("payload %q", rest)
	}
	if rec := tg.record(); rec.Decision != DecisionDeny || rec.Name != "evil.example" || rec.Rule != "" {
		t.Fatalf("record %+v", rec)
	}
}

func TestGatewayDenyTLS(t *testing.T) {
	tg := newTestGW(t, mustPolicy(t, []string{"ok.example"}, nil), nil)
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.9:443"}, string(clientHello(t, "evil.example")))
	if r := readReply(t, br); r.Allow || !strings.Contains(r.Message, "banger vm egress allow v1 evil.example") {
		t.Fatalf("reply %+v", r)
	}
	rest, _ := io.ReadAll(br)
	if !bytes.Equal(rest, tlsAccessDenied) {
		t.Fatalf("payload %x", rest)
	}
	if rec := tg.record(); rec.Decision != DecisionDeny || rec.Name != "evil.example" {
		t.Fatalf("record %+v", rec)
	}
}

func TestGatewayDenyFakeIPHTTP(t *testing.T) {
	// Deny after a DNS answer (the policy changed): the gateway looks at
	// the first bytes only to pick the payload.
	tg := newTestGW(t, mustPolicy(t, []string{"ok.example:443"}, nil), nil)
	fake := tg.g.FakeIPs("id1").Addr("ok.example")
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":80"}, "GET / HTTP/1.1\r\nHost: ok.example\r\n\r\n")
	if r := readReply(t, br); r.Allow {
		t.Fatal("allowed on port 80")
	}
	if rest, _ := io.ReadAll(br); !strings.HasPrefix(string(rest), "HTTP/1.1 403") {
		t.Fatalf("payload %q", rest)
	}
	tg.record()
}

// The attack: a public name the policy allows resolves to 127.0.0.1
// (DNS rebinding, or a hostile zone). The gateway must not carry the
// guest to a service on the host's loopback.
func TestGatewayRefusesNameResolvingToLoopback(t *testing.T) {
	hostService := newUpstream(t, "")
	for _, addr := range []string{"127.0.0.1", "::ffff:127.0.0.1", "10.0.0.1", "169.254.169.254", "0.0.0.0", "198.18.0.1", "64:ff9b::7f00:1", "fe80::1"} {
		t.Run(addr, func(t *testing.T) {
			tg := newTestGW(t, mustPolicy(t, []string{"rebind.example"}, nil), func(o *Options) {
				o.Resolver = fakeResolver{"rebind.example": {netip.MustParseAddr(addr)}}
			})
			fake := tg.g.FakeIPs("id1").Addr("rebind.example")
			_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fmt.Sprintf("%s:%d", fake, hostService.port)}, "GET / HTTP/1.1\r\nHost: rebind.example\r\n\r\n")
			r := readReply(t, br)
			if r.Allow || !strings.Contains(r.Message, "host-local or private") {
				t.Fatalf("reply %+v", r)
			}
			rest, _ := io.ReadAll(br)
			if !strings.HasPrefix(string(rest), "HTTP/1.1 403") {
				t.Fatalf("payload %q", rest)
			}
			if rec := tg.record(); rec.Decision != DecisionDeny {
				t.Fatalf("record %+v", rec)
			}
		})
	}
	if n := hostService.accepts.Load(); n != 0 {
		t.Fatalf("the host service was reached %d times", n)
	}
}

func TestGatewayAddressRules(t *testing.T) {
	up := newUpstream(t, "SSH-2.0-fake\r\n")
	dst := fmt.Sprintf("127.0.0.1:%d", up.port)

	// A broad range does not open the host's loopback.
	tg := newTestGW(t, mustPolicy(t, []string{"0.0.0.0/0"}, nil), nil)
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: dst}, "")
	if r := readReply(t, br); r.Allow {
		t.Fatal("0.0.0.0/0 reached 127.0.0.1")
	}
	tg.record()
	if up.accepts.Load() != 0 {
		t.Fatal("loopback reached")
	}

	// A rule naming the address does; a server that speaks first is not
	// held back by the sniffing.
	tg = newTestGW(t, mustPolicy(t, []string{dst}, nil), func(o *Options) { o.SniffTimeout = 5 * time.Second })
	start := time.Now()
	guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: dst}, "")
	if r := readReply(t, br); !r.Allow {
		t.Fatalf("reply %+v", r)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "SSH-2.0-fake\r\n" {
		t.Fatalf("banner %q %v", line, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("banner took %v: the gateway waited for the client", d)
	}
	_ = guest.(*net.TCPConn).CloseWrite()
	_, _ = io.ReadAll(br)
	if rec := tg.record(); rec.Decision != DecisionAllow || rec.Rule != dst || rec.Name != "" || rec.BytesDown != int64(len("SSH-2.0-fake\r\n")) {
		t.Fatalf("record %+v", rec)
	}

	// An unknown address with nothing to sniff: denied once the sniff
	// times out.
	tg = newTestGW(t, mustPolicy(t, []string{"a.example"}, nil), nil)
	_, br = tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.1:22"}, "")
	if r := readReply(t, br); r.Allow || !strings.Contains(r.Message, "203.0.113.1:22 is not allowed") {
		t.Fatalf("reply %+v", r)
	}
	tg.record()
}

func TestGatewayDenyWins(t *testing.T) {
	up := newUpstream(t, "")
	pol := mustPolicy(t, []string{"*.example.com", "127.0.0.1"}, []string{"bad.example.com", fmt.Sprintf("127.0.0.1:%d", up.port)})
	tg := newTestGW(t, pol, func(o *Options) {
		o.Resolve = map[string]string{"bad.example.com": up.addr}
	})
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.1:80"}, "GET / HTTP/1.1\r\nHost: bad.example.com\r\n\r\n")
	if r := readReply(t, br); r.Allow {
		t.Fatal("deny rule lost to a wildcard")
	}
	if rec := tg.record(); rec.Rule != "bad.example.com" {
		t.Fatalf("record %+v", rec)
	}
	_, br = tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: up.addr}, "")
	if r := readReply(t, br); r.Allow {
		t.Fatal("deny address rule lost")
	}
	tg.record()
	if up.accepts.Load() != 0 {
		t.Fatal("upstream reached")
	}
}

func TestGatewayDeniesResolvedAddress(t *testing.T) {
	pol := mustPolicy(t, []string{"a.example"}, []string{"203.0.113.0/24"})
	tg := newTestGW(t, pol, func(o *Options) {
		o.Resolver = fakeResolver{"a.example": {netip.MustParseAddr("203.0.113.5")}}
	})
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "192.0.2.1:80"}, "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
	if r := readReply(t, br); r.Allow || !strings.Contains(r.Message, "203.0.113.0/24") {
		t.Fatalf("reply %+v", r)
	}
	tg.record()
}

func TestGatewayDNS(t *testing.T) {
	tg := newTestGW(t, mustPolicy(t, []string{"api.example.com"}, nil), nil)
	for _, c := range []struct {
		name  string
		rcode string
	}{{"api.example.com.", "RCodeSuccess"}, {"evil.example.", "RCodeNameError"}} {
		guest, br := tg.open(agentapi.EgressOpen{Kind: "dns", Session: "s9"}, "")
		q := query(t, c.name, 1)
		if _, err := guest.Write(append([]byte{byte(len(q) >> 8), byte(len(q))}, q...)); err != nil {
			t.Fatal(err)
		}
		var lb [2]byte
		if _, err := io.ReadFull(br, lb[:]); err != nil {
			t.Fatal(err)
		}
		ans := make([]byte, int(lb[0])<<8|int(lb[1]))
		if _, err := io.ReadFull(br, ans); err != nil {
			t.Fatal(err)
		}
		var m dnsMsg
		if err := m.Unpack(ans); err != nil || m.Header.RCode.String() != c.rcode {
			t.Fatalf("%s: %v %v", c.name, err, m.Header.RCode)
		}
		rec := tg.record()
		if rec.Proto != "dns" || rec.Session != "s9" || rec.VMID != "id1" || rec.Name != strings.TrimSuffix(c.name, ".") {
			t.Fatalf("record %+v", rec)
		}
	}
	if tg.g.FakeIPs("id1").Len() != 1 {
		t.Fatal("the allowed name was not mapped in the VM's table")
	}
	tg.g.Forget("id1")
	if tg.g.FakeIPs("id1").Len() != 0 {
		t.Fatal("Forget kept the table")
	}
}

func TestGatewayHostileOpen(t *testing.T) {
	tg := newTestGW(t, mustPolicy(t, []string{"a.example"}, nil), nil)
	for _, line := range []string{
		"not json\n",
		`{"kind":"tcp","dst":"nonsense"}` + "\n",
		`{"kind":"tcp","dst":"1.2.3.4:0"}` + "\n",
		`{"kind":"udp"}` + "\n",
		`{"kind":"tcp","evil":1}` + "\n",
		strings.Repeat("x", 10000),
		`{"kind":"dns"}` + "\n\xff\xff",
		`{"kind":"dns"}` + "\n\x00\x03ab",
	} {
		guest, host := tcpPair(t)
		done := make(chan struct{})
		go func() {
			tg.g.Handle(context.Background(), VMRef{ID: "id1", Name: "v1"}, host)
			close(done)
		}()
		_, _ = io.WriteString(guest, line)
		_ = guest.(*net.TCPConn).CloseWrite()
		_, _ = io.ReadAll(guest)
		<-done
		if rec := tg.record(); rec.Decision != DecisionDeny || rec.Note == "" {
			t.Fatalf("%q: record %+v", line, rec)
		}
	}
}

func TestGatewayOff(t *testing.T) {
	tg := newTestGW(t, Policy{}, func(o *Options) {
		o.Policy = func(string) (Policy, string, bool) { return Policy{}, "all", false }
	})
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.1:80"}, "")
	if r := readReply(t, br); r.Allow {
		t.Fatal("allowed with the gateway off")
	}
	tg.record()
}

func TestGatewayContextCancel(t *testing.T) {
	up := newUpstream(t, "")
	tg := newTestGW(t, mustPolicy(t, []string{"up.example"}, nil), func(o *Options) {
		o.Resolve = map[string]string{"up.example": up.addr}
	})
	ctx, cancel := context.WithCancel(context.Background())
	guest, host := tcpPair(t)
	go tg.g.Handle(ctx, VMRef{ID: "id1", Name: "v1"}, host)
	fake := tg.g.FakeIPs("id1").Addr("up.example")
	_ = agentapi.WriteEgressLine(guest, agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":443"})
	br := bufio.NewReader(guest)
	if r := readReply(t, br); !r.Allow {
		t.Fatal("denied")
	}
	cancel()
	_ = guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(br); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read after cancel: %v", err)
	}
	tg.record()
}

// fakeBroker intercepts broker.example and flags "banger-ph-" anywhere.
type fakeBroker struct {
	served chan string
}

func (b *fakeBroker) Intercepts(_ VMRef, name string, port uint16) bool {
	return name == "broker.example" && port == 443
}

func (b *fakeBroker) Serve(ctx context.Context, _ VMRef, guest net.Conn, name string, port uint16, dial func(context.Context) (net.Conn, error), rec *Record) error {
	first := make([]byte, 5)
	if _, err := io.ReadFull(guest, first); err != nil {
		return err
	}
	up, err := dial(ctx)
	if err != nil {
		return err
	}
	up.Close()
	rec.BytesUp = 5
	rec.Note = "brokered"
	b.served <- fmt.Sprintf("%s:%d %x", name, port, first)
	return nil
}

func (b *fakeBroker) Leak(_ VMRef, p []byte) bool { return bytes.Contains(p, []byte("banger-ph-")) }

func TestGatewayBroker(t *testing.T) {
	up := newUpstream(t, "")
	plain := newUpstream(t, "")
	br := &fakeBroker{served: make(chan string, 1)}
	tg := newTestGW(t, mustPolicy(t, []string{"broker.example", "plain.example"}, nil), func(o *Options) {
		o.Broker = br
		o.Resolve = map[string]string{"broker.example": up.addr, "plain.example": plain.addr}
	})
	hello := clientHello(t, "broker.example")
	_, r := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.1:443"}, string(hello))
	if rep := readReply(t, r); !rep.Allow {
		t.Fatal("denied")
	}
	if got, want := <-br.served, fmt.Sprintf("broker.example:443 %x", hello[:5]); got != want {
		t.Fatalf("broker served %q, want %q (the peeked bytes must reach it)", got, want)
	}
	if rec := tg.record(); rec.Note != "brokered" || rec.Decision != DecisionAllow {
		t.Fatalf("record %+v", rec)
	}

	// A placeholder in plaintext to another host, seen while sniffing:
	// refused before any upstream connection, with an explanation.
	req := "POST / HTTP/1.1\r\nHost: plain.example\r\nAuthorization: Bearer sk-ant-banger-ph-123\r\n\r\n"
	_, r = tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.1:80"}, req)
	if rep := readReply(t, r); rep.Allow || !strings.Contains(rep.Message, "placeholder") {
		t.Fatalf("reply %+v", rep)
	}
	if rest, _ := io.ReadAll(r); !strings.HasPrefix(string(rest), "HTTP/1.1 403") {
		t.Fatalf("payload %q", rest)
	}
	if rec := tg.record(); rec.Decision != DecisionLeak || rec.BytesUp != 0 {
		t.Fatalf("record %+v", rec)
	}
	if n := plain.accepts.Load(); n != 0 {
		t.Fatalf("upstream dialed %d times", n)
	}

	// Through a fake address nothing is sniffed: the splice checks the
	// start of the stream and cuts it before the placeholder leaves.
	fake := tg.g.FakeIPs("id1").Addr("plain.example")
	guest, r := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":80"}, "")
	if rep := readReply(t, r); !rep.Allow {
		t.Fatal("denied")
	}
	_, _ = io.WriteString(guest, "POST / HTTP/1.1\r\nHost: plain.example\r\n")
	time.Sleep(50 * time.Millisecond)
	_, _ = io.WriteString(guest, "Authorization: Bearer sk-ant-banger-ph-123\r\n\r\n")
	_ = guest.(*net.TCPConn).CloseWrite()
	_, _ = io.ReadAll(r)
	rec := tg.record()
	if rec.Decision != DecisionLeak {
		t.Fatalf("record %+v", rec)
	}
	select {
	case got := <-plain.got:
		if bytes.Contains(got, []byte("banger-ph-")) {
			t.Fatalf("upstream received %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("upstream connection not closed")
	}
}

// FuzzHandle feeds a stream of hostile bytes to the gateway: it must
// answer or close, record once, and never panic (the recover in Handle
// would log "internal error").
func FuzzHandle(f *testing.F) {
	f.Add([]byte(`{"kind":"tcp","dst":"198.18.0.1:443"}` + "\n" + "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"))
	f.Add([]byte(`{"kind":"tcp","dst":"203.0.113.1:443"}` + "\n\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"))
	f.Add([]byte(`{"kind":"dns"}` + "\n\x00\x0c\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte(`{"kind":"tcp","dst":"[::1]:22"}` + "\n"))
	pol, _ := NewPolicy("p", []string{"*.example", "203.0.113.0/24:443"}, []string{"b.example"})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs := make(chan Record, 2)
		g := New(Options{
			Policy:       func(string) (Policy, string, bool) { return pol, "p", true },
			Record:       func(r Record) { recs <- r },
			Resolve:      map[string]string{"a.example": "127.0.0.1:1"},
			Resolver:     fakeResolver{},
			SniffTimeout: 20 * time.Millisecond,
			DialTimeout:  100 * time.Millisecond,
		})
		g.FakeIPs("id").Addr("a.example")
		guest, host := tcpPair(t)
		done := make(chan struct{})
		go func() {
			g.Handle(context.Background(), VMRef{ID: "id", Name: "v"}, host)
			close(done)
		}()
		go func() {
			_, _ = guest.Write(b)
			_ = guest.(*net.TCPConn).CloseWrite()
		}()
		_ = guest.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.Copy(io.Discard, guest)
		guest.Close()
		<-done
		rec := <-recs
		if rec.Note == "internal error" {
			t.Fatal("Handle panicked")
		}
		if len(recs) != 0 {
			t.Fatal("two records")
		}
	})
}

// replyConn is the guest's view through the agent: the first read
// consumes the gateway's reply line.
type replyConn struct {
	net.Conn
	br    *bufio.Reader
	reply *agentapi.EgressReply
}

func (c *replyConn) Read(b []byte) (int, error) {
	if c.reply == nil {
		c.reply = &agentapi.EgressReply{}
		if err := agentapi.ReadEgressLine(c.br, c.reply); err != nil {
			return 0, err
		}
		if !c.reply.Allow {
			return 0, errors.New(c.reply.Message)
		}
	}
	return c.br.Read(b)
}

func TestGatewayTLSEndToEnd(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.Host)
	}))
	defer srv.Close()
	tg := newTestGW(t, mustPolicy(t, []string{"example.com:443"}, nil), func(o *Options) {
		o.Resolve = map[string]string{"example.com:443": srv.Listener.Addr().String()}
	})
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.7:443"}, "")
	tc := tls.Client(&replyConn{Conn: guest, br: br}, &tls.Config{ServerName: "example.com", RootCAs: pool})
	req, _ := http.NewRequest("GET", "https://example.com/", nil)
	if err := req.Write(tc); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "hello example.com" {
		t.Fatalf("body %q", body)
	}
	tc.Close()
	if rec := tg.record(); rec.Decision != DecisionAllow || rec.Name != "example.com" || rec.BytesUp == 0 || rec.BytesDown == 0 {
		t.Fatalf("record %+v", rec)
	}
}
