package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentclient"
)

// TestImport sends tar streams through the real client, yamux session and
// agent server, and checks what lands on disk.
func TestImport(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := bytes.Repeat([]byte("x"), 3<<20)
	tw.WriteHeader(&tar.Header{Name: "sub/big.bin", Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.WriteHeader(&tar.Header{Name: "link", Linkname: "sub/big.bin", Typeflag: tar.TypeSymlink})
	tw.Close()
	dir := filepath.Join(t.TempDir(), "new", "target")
	st, err := c.Import(ctx, dir, true, bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 1 || st.Symlinks != 1 || st.Bytes != int64(len(body)) {
		t.Fatalf("stats %+v", st)
	}
	got, err := os.ReadFile(filepath.Join(dir, "link"))
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("content through link: %v (%d bytes)", err, len(got))
	}

	// An escaping entry is refused with a 400 and writes nothing outside.
	buf.Reset()
	tw = tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../escaped", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.Close()
	_, err = c.Import(ctx, dir, false, bytes.NewReader(buf.Bytes()))
	var se *agentclient.StatusError
	if !errors.As(err, &se) || se.StatusCode != 400 {
		t.Fatalf("escaping entry: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escaped")); err == nil {
		t.Fatal("escaping entry was written")
	}
	if _, err := c.Import(ctx, "relative/dir", false, bytes.NewReader(nil)); !errors.As(err, &se) || se.StatusCode != 400 {
		t.Fatalf("relative dir: %v", err)
	}
}
