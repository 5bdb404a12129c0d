package agentclient

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/mux"
)

// fakeAgent serves each yamux stream of one session with handle. Closing
// guest is the guest side going away.
func fakeAgent(t *testing.T, handle func(s net.Conn)) (c *Client, guest net.Conn) {
	t.Helper()
	host, guest := net.Pipe()
	go serveGuest(guest, handle)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); guest.Close() })
	return c, guest
}

// serveGuest is the agent's half of a connection: preamble, yamux, handle
// per stream.
func serveGuest(conn net.Conn, handle func(s net.Conn)) {
	linked, err := mux.LinkGuest(context.Background(), conn)
	if err != nil {
		return
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Server(linked, cfg)
	if err != nil {
		return
	}
	defer sess.Close()
	for {
		s, err := sess.Accept()
		if err != nil {
			return
		}
		go handle(s)
	}
}

// answer reads one request and writes raw as the response.
func answer(raw string) func(s net.Conn) {
	return func(s net.Conn) {
		defer s.Close()
		req, err := http.ReadRequest(bufio.NewReader(s))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(s, raw)
		io.Copy(io.Discard, s)
	}
}

// silent accepts streams and never answers.
func silent(s net.Conn) { io.Copy(io.Discard, s) }

func TestHealth(t *testing.T) {
	body := `{"version":"v1.2","boot_id":"b","uptime_seconds":1.5,"hostname":"vm"}`
	c, _ := fakeAgent(t, answer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body))
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h != (api.AgentHealth{Version: "v1.2", BootID: "b", UptimeSeconds: 1.5, Hostname: "vm"}) {
		t.Fatalf("health %+v", h)
	}
}

func TestHealthNeverAnswered(t *testing.T) {
	c, _ := fakeAgent(t, silent)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := c.Health(ctx); err == nil {
		t.Fatal("no error")
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
	if c.IsClosed() {
		t.Fatal("a slow answer must not kill the session")
	}
}

func TestExec(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		status  int
		message string
		hint    string
		code    string
		rest    string
	}{
		// Frames right behind the headers must reach the caller.
		{name: "switch with buffered frames", raw: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: banger-mux/1\r\n\r\n\x01\x00\x00\x00\x02hi", rest: "\x01\x00\x00\x00\x02hi"},
		{name: "json error", raw: withBody("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json",
			`{"error":{"message":"empty command","hint":"pass argv","code":""}}`), status: 400, message: "empty command", hint: "pass argv", code: api.CodeInvalid},
		{name: "plain error", raw: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", status: 503, message: "busy", code: api.CodeUnavailable},
		{name: "empty error", raw: "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", status: 500, message: "500 Internal Server Error", code: api.CodeInternal},
		{name: "wrong protocol", raw: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", message: "switched to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := fakeAgent(t, answer(tt.raw))
			conn, err := c.Exec(context.Background(), api.ExecRequest{Argv: []string{"true"}})
			if tt.rest != "" {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				buf := make([]byte, len(tt.rest))
				if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != tt.rest {
					t.Fatalf("read %q %v", buf, err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if tt.status == 0 {
				if !strings.Contains(err.Error(), tt.message) {
					t.Fatalf("got %v", err)
				}
				return
			}
			var se *StatusError
			var ae *api.Error
			if !errors.As(err, &se) || !errors.As(err, &ae) {
				t.Fatalf("got %T %v", err, err)
			}
			if se.StatusCode != tt.status || ae.Message != tt.message || ae.Hint != tt.hint || ae.Code != tt.code {
				t.Fatalf("got %d %+v", se.StatusCode, ae)
			}
		})
	}
}

// The request on the wire is what the agent (and a splicing daemon)
// expects.
func TestExecRequestOnTheWire(t *testing.T) {
	got := make(chan *http.Request, 1)
	c, _ := fakeAgent(t, func(s net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(s))
		if err != nil {
			return
		}
		b, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(strings.NewReader(string(b)))
		got <- req
		io.WriteString(s, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: banger-mux/1\r\n\r\n")
	})
	conn, err := c.Exec(context.Background(), api.ExecRequest{Argv: []string{"uname"}, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	req := <-got
	body, _ := io.ReadAll(req.Body)
	if req.Method != "POST" || req.URL.Path != agentapi.AgentExecPath || req.Header.Get("Upgrade") != api.MuxProtocol ||
		!strings.EqualFold(req.Header.Get("Connection"), "upgrade") || string(body) != `{"argv":["uname"],"tty":true}` {
		t.Fatalf("request %s %s %v %s", req.Method, req.URL, req.Header, body)
	}
}

func TestExecHandshakeTimeout(t *testing.T) {
	c, _ := fakeAgent(t, silent)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"true"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
}

// Close on a returned stream must wake a reader blocked on it, which a
// bare yamux stream does not do.
func TestStreamCloseWakesReader(t *testing.T) {
	c, _ := fakeAgent(t, silent)
	s, err := c.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("read still blocked after Close")
	}
}

func TestDone(t *testing.T) {
	c, guest := fakeAgent(t, silent)
	if c.IsClosed() {
		t.Fatal("closed at start")
	}
	guest.Close() // the guest side goes away
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed")
	}
	if !c.IsClosed() {
		t.Fatal("IsClosed false")
	}
	if _, err := c.Health(context.Background()); err == nil {
		t.Fatal("health on a dead session")
	}
}

// WaitReady rides out what a booting VM looks like from the host: no
// socket yet, then a socket whose guest end is not open (connections are
// accepted, nothing is answered), then the agent.
func TestWaitReady(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	var dials atomic.Int32
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		time.Sleep(150 * time.Millisecond)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Error(err)
			return
		}
		go func() { <-stop; ln.Close() }()
		for i := 0; ; i++ {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if i == 0 {
				go io.Copy(io.Discard, conn) // guest end not open yet
				continue
			}
			go serveHealth(conn)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := WaitReady(ctx, func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := dials.Load(); n < 3 {
		t.Fatalf("ready after %d dials; the first ones should have failed", n)
	}
}

func TestWaitReadyGivesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := WaitReady(ctx, func(ctx context.Context) (net.Conn, error) {
		return nil, errors.New("connection refused")
	}, 100*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v", err)
	}
}

func serveHealth(conn net.Conn) {
	body := `{"version":"dev"}`
	serveGuest(conn, answer("HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body))
}

func withBody(head, body string) string {
	return head + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// TestAcceptStream: a stream the guest opens on its session reaches the
// host's AcceptStream with its bytes, both ways, and AcceptStream fails
// once the session is gone.
func TestAcceptStream(t *testing.T) {
	host, guest := net.Pipe()
	guestSess := make(chan *yamux.Session, 1)
	go func() {
		linked, err := mux.LinkGuest(context.Background(), guest)
		if err != nil {
			close(guestSess)
			return
		}
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		sess, err := yamux.Server(linked, cfg)
		if err != nil {
			close(guestSess)
			return
		}
		guestSess <- sess
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gs := <-guestSess
	if gs == nil {
		t.Fatal("guest session did not start")
	}
	defer gs.Close()

	go func() {
		s, err := gs.OpenStream()
		if err != nil {
			return
		}
		_ = agentapi.WriteEgressLine(s, agentapi.EgressOpen{Kind: agentapi.EgressKindTCP, Dst: "192.0.2.1:443"})
		b := make([]byte, 2)
		if _, err := io.ReadFull(s, b); err == nil {
			s.Write(b) // echo the host's bytes back
		}
		s.Close()
	}()
	s, err := c.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var open agentapi.EgressOpen
	br := bufio.NewReader(s)
	if err := agentapi.ReadEgressLine(br, &open); err != nil {
		t.Fatal(err)
	}
	if open.Dst != "192.0.2.1:443" {
		t.Fatalf("dst %q", open.Dst)
	}
	if _, err := s.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "ok" {
		t.Fatalf("echo %q, %v", rest, err)
	}
	s.Close()

	// A cancelled wait returns ctx's error; a dead session fails.
	cctx, ccancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer ccancel()
	if _, err := c.AcceptStream(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled accept: %v", err)
	}
	gs.Close()
	if _, err := c.AcceptStream(ctx); err == nil {
		t.Fatal("accept on a dead session succeeded")
	}
}
