package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentclient"
)

// The vsock path: each accepted stream is its own session, and a second
// host (a restarted daemon) is served while the first is still open.
func TestServeListener(t *testing.T) {
	dir, err := os.MkdirTemp("", "ag")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "l.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ctx, ln) }()

	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	var clients []*agentclient.Client
	for range 2 {
		c, err := agentclient.DialUnix(hctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	for i, c := range clients {
		if _, err := c.Health(hctx); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	// The first host going away leaves the second one served.
	clients[0].Close()
	if _, err := clients[1].Health(hctx); err != nil {
		t.Fatalf("second host after the first left: %v", err)
	}
	clients[1].Close()
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("ServeListener returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeListener did not stop with its context")
	}
}
