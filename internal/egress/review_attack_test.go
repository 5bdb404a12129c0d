package egress

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentapi"
)

// The attack (domain fronting through a fake address): the guest looks
// up an allowed name that sits on a shared CDN, connects to its fake
// address, and then asks for a different, unallowed host in its SNI or
// Host header. The gateway dials the allowed name's servers, which
// route by SNI/Host: the bytes would reach the unallowed site. The
// named host must match the address's name, or be allowed itself.
func TestGatewayFakeIPNameMismatchBlocked(t *testing.T) {
	for _, tc := range []struct {
		name, port, first string
	}{
		{"http", "80", "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"},
		{"tls", "443", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, "")
			tg := newTestGW(t, mustPolicy(t, []string{"cdn.example:" + tc.port}, nil), func(o *Options) {
				o.Resolve = map[string]string{"cdn.example": up.addr}
			})
			first := tc.first
			if first == "" {
				first = string(clientHello(t, "evil.example"))
			}
			fake := tg.g.FakeIPs("id1").Addr("cdn.example")
			guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":" + tc.port}, first)
			r := readReply(t, br)
			_ = guest.(*net.TCPConn).CloseWrite()
			_, _ = io.ReadAll(br)
			rec := tg.record()
			select {
			case got := <-up.got:
				if strings.Contains(string(got), "evil.example") {
					t.Fatalf("the upstream of cdn.example got the request for evil.example (reply %+v)", r)
				}
			case <-time.After(2 * time.Second):
			}
			if rec.Decision != DecisionDeny {
				t.Fatalf("record %+v", rec)
			}
		})
	}
}

// The same name (or another allowed one) in the first bytes is fine, and
// a server-first protocol is not held back waiting for the client.
func TestGatewayFakeIPNameMatchAllowed(t *testing.T) {
	up := newUpstream(t, "")
	tg := newTestGW(t, mustPolicy(t, []string{"cdn.example:80", "other.example:80"}, nil), func(o *Options) {
		o.Resolve = map[string]string{"cdn.example": up.addr}
	})
	fake := tg.g.FakeIPs("id1").Addr("cdn.example")
	for _, host := range []string{"cdn.example", "other.example"} {
		req := "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
		guest, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":80"}, req)
		if r := readReply(t, br); !r.Allow {
			t.Fatalf("denied %+v", r)
		}
		_ = guest.(*net.TCPConn).CloseWrite()
		if got := <-up.got; string(got) != req {
			t.Fatalf("upstream got %q", got)
		}
		_, _ = io.ReadAll(br)
		if rec := tg.record(); rec.Decision != DecisionAllow {
			t.Fatalf("record %+v", rec)
		}
	}
}

func TestGatewayFakeIPServerFirst(t *testing.T) {
	up := newUpstream(t, "SSH-2.0-fake\r\n")
	tg := newTestGW(t, mustPolicy(t, []string{"git.example:22"}, nil), func(o *Options) {
		o.Resolve = map[string]string{"git.example": up.addr}
		o.SniffTimeout = 5 * time.Second
	})
	fake := tg.g.FakeIPs("id1").Addr("git.example")
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":22"}, "")
	start := time.Now()
	if r := readReply(t, br); !r.Allow {
		t.Fatalf("denied %+v", r)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "SSH-2.0-fake\r\n" || time.Since(start) > time.Second {
		t.Fatalf("banner %q %v after %v", line, err, time.Since(start))
	}
}

// The attack: a guest opens streams and never finishes them (or keeps
// thousands of upstream connections open). Each costs the daemon a
// goroutine, buffers and an upstream socket: without a bound per VM one
// guest exhausts the daemon's file descriptors for every VM and the API.
func TestGatewayBoundsStreamsPerVM(t *testing.T) {
	tg := newTestGW(t, mustPolicy(t, nil, nil), func(o *Options) { o.MaxStreams = 2 })
	vm := VMRef{ID: "id1", Name: "v1"}
	for i := 0; i < 2; i++ {
		_, host := tcpPair(t)
		go tg.g.Handle(context.Background(), vm, host) // never sends its open line
	}
	deadline := time.Now().Add(2 * time.Second)
	for tg.g.active(vm.ID) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d active", tg.g.active(vm.ID))
		}
		time.Sleep(5 * time.Millisecond)
	}
	guest, host := tcpPair(t)
	go tg.g.Handle(context.Background(), vm, host)
	_ = guest.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := guest.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the stream over the bound was not closed at once: %v", err)
	}
	if rec := tg.record(); rec.Decision != DecisionDeny || !strings.Contains(rec.Note, "too many") {
		t.Fatalf("record %+v", rec)
	}
	// Another VM is not affected.
	other, host2 := tcpPair(t)
	go tg.g.Handle(context.Background(), VMRef{ID: "id2", Name: "v2"}, host2)
	_ = other.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := other.Read(make([]byte, 1)); err == io.EOF {
		t.Fatal("another VM's stream was refused")
	}
}

// The attack: the guest names its process (comm) and session with
// terminal escape sequences; `banger vm egress log` prints them in the
// host user's terminal (OSC 52 writes the clipboard, others retitle or
// hide lines). The log must keep printable text only.
func TestGatewayAttributionIsPrintable(t *testing.T) {
	tg := newTestGW(t, mustPolicy(t, nil, nil), nil)
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: "192.0.2.1:443", PID: 1,
		Process: "curl\x1b]52;c;ZXZpbA==\x07", Session: "s1\x1b[2K\r\u202eevil\n"}, "")
	readReply(t, br)
	rec := tg.record()
	for _, s := range []string{rec.Process, rec.Session} {
		for _, r := range s {
			if r < 0x20 || r == 0x7f || r == '\u202e' {
				t.Fatalf("control character %U kept in %q", r, s)
			}
		}
	}
	if !strings.HasPrefix(rec.Process, "curl") || !strings.HasPrefix(rec.Session, "s1") {
		t.Fatalf("record %q %q", rec.Process, rec.Session)
	}
}

// The attack: an allowed name (a wildcard over a zone the attacker can
// add records to, or a rebinding answer) resolves to one of the host's
// own public addresses, where services listening on 0.0.0.0 answer. The
// gateway must not dial its own host.
func TestGatewayRefusesHostOwnAddress(t *testing.T) {
	own := netip.MustParseAddr("203.0.113.7") // never dialed: the test's dial hook refuses
	tg := newTestGW(t, mustPolicy(t, []string{"*.tunnel.example", "203.0.113.0/24:22"}, nil), func(o *Options) {
		o.Resolver = fakeResolver{"me.tunnel.example": {own}}
		o.LocalAddrs = func() []netip.Addr { return []netip.Addr{own} }
	})
	var dialed atomic.Int32
	tg.g.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed.Add(1)
		return nil, errors.New("test: no real dial")
	}
	fake := tg.g.FakeIPs("id1").Addr("me.tunnel.example")
	_, br := tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":443"}, "")
	if r := readReply(t, br); r.Allow {
		t.Fatalf("allowed %+v", r)
	}
	tg.record()
	// An address range that covers the host's address is not enough.
	_, br = tg.open(agentapi.EgressOpen{Kind: "tcp", Dst: own.String() + ":22"}, "")
	if r := readReply(t, br); r.Allow {
		t.Fatalf("allowed %+v", r)
	}
	tg.record()
	if n := dialed.Load(); n != 0 {
		t.Fatalf("the host's own address was dialed %d times", n)
	}
}

// The attack: an absolute-form request line names another host than
// the Host header. RFC 9112 (3.2.2) has the server route by the
// request line and ignore Host, so a shared server (CDN) would serve
// evil.example while the gateway judged ok.example.
func TestSniffHTTPAbsoluteForm(t *testing.T) {
	for req, want := range map[string]string{
		"GET http://evil.example/x HTTP/1.1\r\nHost: ok.example\r\n\r\n":     "evil.example",
		"GET HTTP://EVIL.example:8080/ HTTP/1.1\r\nHost: ok.example\r\n\r\n": "evil.example",
		"CONNECT evil.example:443 HTTP/1.1\r\nHost: ok.example\r\n\r\n":      "evil.example",
		"GET /x HTTP/1.1\r\nHost: ok.example\r\n\r\n":                        "ok.example",
		"OPTIONS * HTTP/1.1\r\nHost: ok.example\r\n\r\n":                     "ok.example",
	} {
		if got, kind := Sniff([]byte(req)); got != want || kind != KindHTTP {
			t.Errorf("Sniff(%q) = %q %q, want %q", req, got, kind, want)
		}
	}
}
