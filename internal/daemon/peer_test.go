package daemon

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPeerListenerRefusesOtherUsers: a connection whose peer uid is not
// the daemon's is closed before any byte is read.
func TestPeerListenerRefusesOtherUsers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		uid    int
		accept bool
	}{
		{"same user", os.Getuid(), true},
		{"other user", os.Getuid() + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			pl := &peerListener{Listener: ln, uid: tc.uid, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := pl.Accept()
				if err == nil {
					accepted <- c
				}
			}()
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case sc := <-accepted:
				sc.Close()
				if !tc.accept {
					t.Fatal("accepted a connection from another uid")
				}
			case <-time.After(500 * time.Millisecond):
				if tc.accept {
					t.Fatal("refused a connection from the daemon's own uid")
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				if _, err := c.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("refused connection not closed: %v", err)
				}
			}
			ln.Close()
		})
	}
}
