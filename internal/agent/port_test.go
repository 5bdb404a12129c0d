package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/mux"
)

// fakePort behaves like a virtio-serial port whose guest never notices a
// host leaving: bytes of whichever host is connected reach the agent's
// open port, but a host disconnect delivers no EOF. (On a real port this
// happens when the next host connects before the guest's read runs.)
type fakePort struct {
	mu    sync.Mutex
	guest net.Conn // port side of the agent's current open
	host  net.Conn // port side of the current host
	opens int
}

func (p *fakePort) current(guest bool) net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if guest {
		return p.guest
	}
	return p.host
}

// pump copies from src to whatever peer is current, dropping data when
// there is none, like a port without a host.
func (p *fakePort) pump(src net.Conn, toGuest bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if dst := p.current(toGuest); dst != nil {
				dst.Write(buf[:n])
			}
		}
		if err != nil {
			return
		}
	}
}

// open is the agent's Transport: a fresh port open.
func (p *fakePort) open(ctx context.Context) (io.ReadWriteCloser, error) {
	a, b := net.Pipe()
	p.mu.Lock()
	p.guest = b
	p.opens++
	p.mu.Unlock()
	go p.pump(b, false)
	return a, nil
}

// connect is a host connecting to QEMU's chardev socket.
func (p *fakePort) connect() net.Conn {
	h, hp := net.Pipe()
	p.mu.Lock()
	p.host = hp
	p.mu.Unlock()
	go p.pump(hp, true)
	return h
}

func startPortAgent(t *testing.T, keepAlive time.Duration) *fakePort {
	t.Helper()
	p := &fakePort{}
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.defaultDir = t.TempDir()
	srv.keepAlive, srv.writeTimeout = keepAlive, keepAlive
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, p.open); close(done) }()
	t.Cleanup(func() {
		cancel()
		if g := p.current(true); g != nil {
			g.Close()
		}
		<-done
	})
	return p
}

func portClient(t *testing.T, p *fakePort, timeout time.Duration) *agentclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := agentclient.New(ctx, p.connect())
	if err != nil {
		t.Fatalf("new host: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The next host gets a fresh session even though the agent never saw the
// previous one leave, and the previous host's command dies with its
// session.
func TestNewHostWithoutHangup(t *testing.T) {
	p := startPortAgent(t, 15*time.Second)
	a := portClient(t, p, 5*time.Second)
	if _, err := a.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := a.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", "sleep 100 & echo $!; wait"}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := mux.NewReader(conn).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(f.Payload)))

	// Host A vanishes without the agent hearing of it; host B reuses
	// stream ids that A's session still holds.
	p.current(false).Close()
	b := portClient(t, p, 5*time.Second)
	for i := range 3 {
		if r := runCmd(t, b, api.ExecRequest{Argv: []string{"echo", strconv.Itoa(i)}}, nil); r.stdout != strconv.Itoa(i)+"\n" {
			t.Fatalf("exec on new host: %+v", r)
		}
	}
	if p.opens < 2 {
		t.Fatalf("agent reused the old session (%d opens)", p.opens)
	}
	deadline := time.Now().Add(3 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatal("the old host's command survived")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A host that died halfway through a frame leaves the agent's session
// waiting for payload, which would swallow the next host's preamble;
// keepalive ends that session and the next host gets through.
func TestNewHostAfterTornFrame(t *testing.T) {
	p := startPortAgent(t, 300*time.Millisecond)
	portClient(t, p, 5*time.Second)
	// A yamux data frame header for stream 1 announcing 1000 bytes, then
	// only 10 of them.
	torn := []byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x03, 0xe8}
	p.current(true).Write(append(torn, make([]byte, 10)...))
	p.current(false).Close()
	t0 := time.Now()
	b := portClient(t, p, 5*time.Second)
	if _, err := b.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("new host served after %s", time.Since(t0))
}
