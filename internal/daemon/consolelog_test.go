package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestConsoleReaderFollows: a followed console log carries on across a
// rotation (a new file in its place) and a copy-truncate, and ends once
// the VM is no longer alive.
func TestConsoleReaderFollows(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	if err := os.WriteFile(path+".1", []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.Open(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	var alive atomic.Bool
	alive.Store(true)
	cr := &consoleReader{ctx: context.Background(), old: old, f: f, path: path, follow: true,
		alive: func(context.Context) bool { return alive.Load() }}
	defer cr.Close()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(cr)
		got <- string(b)
	}()
	time.Sleep(2 * consolePoll)
	// Rotation: the file is renamed away and a new one takes its place.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * consolePoll)
	alive.Store(false)
	select {
	case s := <-got:
		if s != "old\none\ntwo\n" {
			t.Fatalf("read %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a followed log of a dead VM did not end")
	}
}

// TestConsoleReaderWithoutFollowEnds: without follow, the reader ends at
// the end of the current file.
func TestConsoleReaderWithoutFollowEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte("boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	cr := &consoleReader{ctx: context.Background(), f: f, path: path, alive: func(context.Context) bool { return true }}
	defer cr.Close()
	b, err := io.ReadAll(cr)
	if err != nil || string(b) != "boot\n" {
		t.Fatalf("read %q, %v", b, err)
	}
}
