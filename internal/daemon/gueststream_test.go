package daemon

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/workspace"
)

// hostileAgent is a fake guest agent whose every HTTP answer is handle's.
func hostileAgent(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) *agentclient.Client {
	t.Helper()
	host, guest := net.Pipe()
	go func() {
		linked, err := mux.LinkGuest(context.Background(), guest)
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
			go func() {
				defer s.Close()
				req, err := http.ReadRequest(bufio.NewReader(s))
				if err != nil {
					return
				}
				rw := newRawResponse(s)
				handle(rw, req)
				rw.finish()
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agentclient.New(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); guest.Close() })
	return c
}

// rawResponse is a minimal chunked HTTP/1.1 response writer on a stream.
type rawResponse struct {
	w      *bufio.Writer
	h      http.Header
	status int
	sent   bool
}

func newRawResponse(w io.Writer) *rawResponse {
	return &rawResponse{w: bufio.NewWriter(w), h: http.Header{}}
}
func (r *rawResponse) Header() http.Header { return r.h }
func (r *rawResponse) WriteHeader(code int) {
	if r.sent {
		return
	}
	r.sent, r.status = true, code
	fmt.Fprintf(r.w, "HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\n", code, http.StatusText(code))
	r.h.Write(r.w)
	io.WriteString(r.w, "\r\n")
}
func (r *rawResponse) Write(p []byte) (int, error) {
	r.WriteHeader(200)
	if len(p) == 0 {
		return 0, nil
	}
	fmt.Fprintf(r.w, "%x\r\n", len(p))
	r.w.Write(p)
	_, err := io.WriteString(r.w, "\r\n")
	if err == nil {
		err = r.w.Flush()
	}
	return len(p), err
}
func (r *rawResponse) finish() {
	r.WriteHeader(200)
	io.WriteString(r.w, "0\r\n\r\n")
	r.w.Flush()
}

// endlessBundle answers a workspace export with a valid header and then
// bundle bytes that never end (or end after n bytes).
func endlessBundle(n int64) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		hdr := []byte(`{"refs":[{"name":"refs/heads/main","object":"0123456789012345678901234567890123456789"}]}`)
		var size [4]byte
		binary.BigEndian.PutUint32(size[:], uint32(len(hdr)))
		w.Write(size[:])
		w.Write(hdr)
		chunk := make([]byte, 64<<10)
		for sent := int64(0); n < 0 || sent < n; sent += int64(len(chunk)) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
}

func streamDaemon(t *testing.T) *Daemon {
	d := testDaemon(t, nil)
	d.layout = paths.Layout{CacheDir: t.TempDir()}
	d.cfg.Limits.GuestStreamMiB = 2
	d.cfg.Limits.MinFreeMiB = 64
	return d
}

func cacheEntries(t *testing.T, d *Daemon) []string {
	ents, err := os.ReadDir(d.layout.CacheDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestPullBundleOverCapRemoved: a guest sending a bundle past
// limits.guest_stream_mib gets a clear error and leaves no file.
func TestPullBundleOverCapRemoved(t *testing.T) {
	d := streamDaemon(t)
	ac := hostileAgent(t, endlessBundle(-1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	file, _, _, err := d.receivePull(ctx, ac, workspace.ExportRequest{Dir: "/root/repo"})
	if err == nil {
		os.Remove(file)
		t.Fatal("an endless bundle was accepted")
	}
	if !errors.Is(err, system.ErrTooLarge) || !strings.Contains(err.Error(), "limits.guest_stream_mib") {
		t.Fatalf("err = %v, want a size-limit error naming the key", err)
	}
	if left := cacheEntries(t, d); len(left) != 0 {
		t.Fatalf("partial bundle left behind: %v", left)
	}

	// Under the cap it is received whole.
	ac = hostileAgent(t, endlessBundle(1<<20))
	file, refs, n, err := d.receivePull(ctx, ac, workspace.ExportRequest{Dir: "/root/repo"})
	if err != nil || n != 1<<20 || len(refs) != 1 {
		t.Fatalf("honest bundle: n=%d refs=%v err=%v", n, refs, err)
	}
	os.Remove(file)
}

// TestPullRefusedWhenDiskLow: with less free space than the reserve the
// pull refuses before receiving anything, naming the directory and the
// figures; a disk that fills during the stream stops it too.
func TestPullRefusedWhenDiskLow(t *testing.T) {
	d := streamDaemon(t)
	d.cfg.Limits.GuestStreamMiB = 4096
	free := uint64(40 << 20)
	d.statfs = func(string) (uint64, error) { return free, nil }
	ac := hostileAgent(t, endlessBundle(-1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _, _, err := d.receivePull(ctx, ac, workspace.ExportRequest{Dir: "/root/repo"})
	if !errors.Is(err, system.ErrNoSpace) || !strings.Contains(err.Error(), d.layout.CacheDir) || !strings.Contains(err.Error(), "40.0 MiB free") {
		t.Fatalf("err = %v", err)
	}
	if left := cacheEntries(t, d); len(left) != 0 {
		t.Fatalf("partial bundle left behind: %v", left)
	}
}

// TestDeriveRootTarOverCap: the provisioning VM's /root tar is bounded
// by limits.guest_stream_mib too.
func TestDeriveRootTarOverCap(t *testing.T) {
	d := streamDaemon(t)
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		tw.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: 1 << 40, Typeflag: tar.TypeReg})
		chunk := make([]byte, 64<<10)
		for {
			if _, err := tw.Write(chunk); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	seed := filepath.Join(t.TempDir(), "work-seed")
	err := d.imageEngine().receiveRootTar(context.Background(), pr, seed)
	pr.CloseWithError(errors.New("done"))
	if err == nil || !strings.Contains(err.Error(), "limits.guest_stream_mib") {
		t.Fatalf("err = %v", err)
	}
}

// TestGuestOutputBuffersCapped: a guest command's output collected in
// memory (dpkg-query, verify checks, stderr) is bounded.
func TestGuestOutputBuffersCapped(t *testing.T) {
	var b strings.Builder
	w := guestOutputBuffer(&b, "package list")
	var err error
	chunk := make([]byte, 1<<20)
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = w.Write(chunk)
	}
	if !errors.Is(err, system.ErrTooLarge) || b.Len() > maxGuestOutput {
		t.Fatalf("err = %v after %d bytes", err, b.Len())
	}
	_ = api.Version
	_ = filepath.Join
}
