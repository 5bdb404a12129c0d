package daemon

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
)

// TestHTTPServerBounds: the daemon's server times out slow headers and
// idle connections but has no write timeout (attach, exec, events and op
// watch are long-lived streams), and a connection past the cap gets a
// clear 503 while the streams already open keep working.
func TestHTTPServerBounds(t *testing.T) {
	cfg := config.Default()
	cfg.Limits.MaxConnections = 2
	d := &Daemon{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		if r.URL.Path == "/stream" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "done\n")
	})
	srv := d.httpServer(h)
	if srv.ReadHeaderTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Fatalf("timeouts: read header %v, idle %v", srv.ReadHeaderTimeout, srv.IdleTimeout)
	}
	if srv.WriteTimeout != 0 || srv.ReadTimeout != 0 {
		t.Fatalf("a read/write timeout would cut long-lived streams: %v/%v", srv.ReadTimeout, srv.WriteTimeout)
	}

	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(d.limitConns(ln))
	defer srv.Close()

	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	get := func(c net.Conn, path string) *http.Response {
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: d\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp
	}
	// Two long streams fill the cap.
	s1, s2 := dial(), dial()
	defer s1.Close()
	defer s2.Close()
	for _, c := range []net.Conn{s1, s2} {
		if resp := get(c, "/stream"); resp.StatusCode != 200 {
			t.Fatalf("stream status %d", resp.StatusCode)
		}
	}
	// The third is refused with a 503 that says why.
	c3 := dial()
	resp := get(c3, "/quick")
	var body api.ErrorBody
	json.NewDecoder(resp.Body).Decode(&body)
	c3.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || body.Error == nil || !strings.Contains(body.Error.Message, "connections") {
		t.Fatalf("over the cap: status %d, body %+v", resp.StatusCode, body.Error)
	}
	// One stream ends: a new connection gets through.
	s1.Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		c := dial()
		resp := get(c, "/quick")
		c.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a freed slot was never reused (status %d)", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(release)
}
