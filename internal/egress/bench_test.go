package egress

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/bangerdev/banger/internal/agentapi"
)

// sink is an upstream that writes size bytes to each client and closes.
func sink(b *testing.B, size int64) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for left := size; left > 0; {
					n := min(left, int64(len(buf)))
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
					left -= n
				}
			}()
		}
	}()
	return l.Addr().String()
}

// BenchmarkDownload compares a download through the gateway with the
// same download straight from the upstream.
func BenchmarkDownload(b *testing.B) {
	const size = 64 << 20
	addr := sink(b, size)
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.Copy(io.Discard, c); n != size {
				b.Fatalf("got %d", n)
			}
			c.Close()
		}
	})
	b.Run("gateway", func(b *testing.B) {
		gw, fake := benchGateway(b, addr)
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			c, err := net.Dial("tcp", gw)
			if err != nil {
				b.Fatal(err)
			}
			_ = agentapi.WriteEgressLine(c, agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":443"})
			n, _ := io.Copy(io.Discard, c)
			if n < size {
				b.Fatalf("got %d", n)
			}
			c.Close()
		}
	})
}

// echoHTTP is an upstream that answers one tiny HTTP response per
// connection once the request's headers are in.
func echoHTTP(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhello"))
			}()
		}
	}()
	return l.Addr().String()
}

// BenchmarkConnect is one new connection with a tiny HTTP exchange,
// through the gateway (policy, fake address, sniff, dial, splice) and
// straight to the upstream, on the host's loopback: what the gateway
// itself adds to a connection, without the agent channel.
func BenchmarkConnect(b *testing.B) {
	addr := echoHTTP(b)
	req := []byte("GET / HTTP/1.0\r\nHost: up.example\r\n\r\n")
	exchange := func(b *testing.B, c net.Conn) {
		c.Write(req)
		c.(*net.TCPConn).CloseWrite()
		if n, _ := io.Copy(io.Discard, c); n == 0 {
			b.Fatal("no answer")
		}
		c.Close()
	}
	b.Run("direct", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			exchange(b, c)
		}
	})
	b.Run("gateway", func(b *testing.B) {
		gw, fake := benchGateway(b, addr)
		for i := 0; i < b.N; i++ {
			c, err := net.Dial("tcp", gw)
			if err != nil {
				b.Fatal(err)
			}
			_ = agentapi.WriteEgressLine(c, agentapi.EgressOpen{Kind: "tcp", Dst: fake.String() + ":80"})
			// The reply line and the answer, read as one stream.
			exchange(b, c)
		}
	})
}

// benchGateway serves a gateway on the host's loopback whose policy
// allows up.example, resolved to addr; it returns where to dial it and
// up.example's fake address.
func benchGateway(b *testing.B, addr string) (string, netip.Addr) {
	pol, _ := NewPolicy("p", []string{"up.example"}, nil)
	g := New(Options{
		Policy:   func(string) (Policy, string, bool) { return pol, "p", true },
		Resolve:  map[string]string{"up.example": addr},
		Resolver: fakeResolver{},
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go g.Handle(context.Background(), VMRef{ID: "id", Name: "v"}, c)
		}
	}()
	return l.Addr().String(), g.FakeIPs("id").Addr("up.example")
}
