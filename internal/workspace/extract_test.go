package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestExtractTree: small files (through the writer pool) and a large one
// (streamed) land with their content and mode, symlinks as symlinks, and
// the returned stat data is the files' own.
func TestExtractTree(t *testing.T) {
	t.Parallel()
	var entries []tarEntry
	want := map[string]string{}
	for i := range 300 {
		name := fmt.Sprintf("d%d/f%03d.txt", i%7, i)
		body := strings.Repeat(fmt.Sprintf("%d ", i), i)
		entries = append(entries, tarEntry{name: name, typ: tar.TypeReg, body: body})
		want[name] = body
	}
	big := strings.Repeat("0123456789abcdef", (smallFile+12345)/16)
	entries = append(entries,
		tarEntry{name: "big/blob.bin", typ: tar.TypeReg, body: big},
		tarEntry{name: "run.sh", typ: tar.TypeReg, body: "#!/bin/sh\n", mode: 0o755},
		tarEntry{name: "link", typ: tar.TypeSymlink, link: "d0/f000.txt"},
		tarEntry{name: "empty", typ: tar.TypeReg},
	)
	want["big/blob.bin"], want["run.sh"], want["empty"] = big, "#!/bin/sh\n", ""
	data, err := buildTar(entries...)
	must(t, err)
	dir := t.TempDir()
	stats, st, err := extractTree(context.Background(), bytes.NewReader(data), dir, false)
	must(t, err)
	if st.Files != len(want) || st.Symlinks != 1 || len(stats) != len(want)+1 {
		t.Fatalf("stats: %+v, %d stat records", st, len(stats))
	}
	for name, body := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != body {
			t.Fatalf("%s: %d bytes, %v", name, len(got), err)
		}
		var sys syscall.Stat_t
		must(t, syscall.Lstat(filepath.Join(dir, name), &sys))
		if stats[name] != statOf(&sys) {
			t.Fatalf("%s: recorded %+v, file has %+v", name, stats[name], statOf(&sys))
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("run.sh mode: %v %v", fi.Mode(), err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "link")); err != nil || target != "d0/f000.txt" {
		t.Fatalf("link: %q %v", target, err)
	}
}
