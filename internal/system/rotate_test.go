package system

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotatingWriterBoundsDiskAndKeepsNewest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w := &RotatingWriter{Path: path, Max: 1000}
	defer w.Close()
	// A guest printing forever: 1 MB through a 1000-byte cap.
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyz\n")
	var last []byte
	for i := range 30000 {
		last = []byte(strings.Repeat("x", i%7) + string(line))
		if _, err := w.Write(last); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{path, path + ".1"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1000 {
			t.Fatalf("%s is %d bytes, cap 1000", p, st.Size())
		}
	}
	var all bytes.Buffer
	if err := CopyRotated(&all, path); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(all.Bytes(), last) || all.Len() < 1000 {
		t.Fatalf("retained log (%d bytes) lost the newest line", all.Len())
	}
	if tail := TailFile(path, 1500); len(tail) != 1500 || !strings.HasSuffix(tail, string(last)) {
		t.Fatalf("TailFile across generations = %d bytes", len(tail))
	}
}

func TestRotatingWriterAppendsToExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(path, []byte("0123456789"), 0o600)
	w := &RotatingWriter{Path: path, Max: 15}
	w.Write([]byte("abcdefgh"))
	w.Close()
	if b, _ := os.ReadFile(path + ".1"); string(b) != "0123456789abcde" {
		t.Fatalf(".1 = %q", b)
	}
	if b, _ := os.ReadFile(path); string(b) != "fgh" {
		t.Fatalf("current = %q", b)
	}
}

func TestCopyTruncate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	// The writer keeps its O_APPEND fd across the truncate, as Firecracker does.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(bytes.Repeat([]byte("a"), 5000))
	f.Write([]byte("NEWEST"))
	if err := CopyTruncate(path, 100); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path + ".1")
	if len(old) != 100 || !bytes.HasSuffix(old, []byte("NEWEST")) {
		t.Fatalf(".1 = %d bytes %q", len(old), old[len(old)-10:])
	}
	f.Write([]byte("after"))
	if b, _ := os.ReadFile(path); string(b) != "after" {
		t.Fatalf("current after truncate = %q (an fd without O_APPEND would leave a hole)", b)
	}
	// Under the cap nothing happens.
	if err := CopyTruncate(path, 100); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "after" {
		t.Fatalf("small log rotated: %q", b)
	}
}
