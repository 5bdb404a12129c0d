package tarx

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, link, body string
	typ              byte
	mode             int64
}

func makeTar(t testing.TB, entries ...entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		if e.mode == 0 {
			e.mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtract(t *testing.T) {
	dir := t.TempDir()
	data := makeTar(t,
		entry{name: "a/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "a/run.sh", typ: tar.TypeReg, body: "#!/bin/sh\n", mode: 0o755},
		entry{name: "a/empty", typ: tar.TypeReg},
		entry{name: "name with spaces and ünicode\nnewline", typ: tar.TypeReg, body: "x"},
		entry{name: "link-in", typ: tar.TypeSymlink, link: "a/run.sh"},
		entry{name: "link-out", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "setuid", typ: tar.TypeReg, body: "s", mode: 0o4755},
	)
	st, err := Extract(context.Background(), bytes.NewReader(data), dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 4 || st.Symlinks != 2 || st.Dirs != 1 || st.Bytes != 12 {
		t.Fatalf("stats %+v", st)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a/run.sh")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("exec bit lost: %v", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(dir, "setuid")); fi.Mode()&os.ModeSetuid != 0 {
		t.Fatal("setuid bit kept")
	}
	if l, _ := os.Readlink(filepath.Join(dir, "link-out")); l != "/etc/passwd" {
		t.Fatalf("symlink target changed: %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "name with spaces and ünicode\nnewline")); string(b) != "x" {
		t.Fatal("odd name lost")
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]entry{
		"dotdot":   {{name: "../evil", typ: tar.TypeReg, body: "x"}},
		"absolute": {{name: "/tmp/evil", typ: tar.TypeReg, body: "x"}},
		"nested":   {{name: "a/../../evil", typ: tar.TypeReg, body: "x"}},
		// A symlink to outside, then a file written through it.
		"through symlink": {
			{name: "out", typ: tar.TypeSymlink, link: outside},
			{name: "out/evil", typ: tar.TypeReg, body: "x"},
		},
		"through symlink dir": {
			{name: "out", typ: tar.TypeSymlink, link: "../../../../../../" + outside},
			{name: "out/sub/evil", typ: tar.TypeReg, body: "x"},
		},
		"device": {{name: "dev", typ: tar.TypeChar}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := Extract(context.Background(), bytes.NewReader(makeTar(t, entries...)), dir, 0)
			if err == nil {
				t.Fatal("extraction succeeded")
			}
			if !errors.Is(err, ErrUnsafePath) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			if matches, _ := filepath.Glob(filepath.Join(outside, "*")); len(matches) != 0 {
				t.Fatalf("wrote outside: %v", matches)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "evil")); err == nil {
				t.Fatal("wrote next to the target")
			}
		})
	}
}

func TestExtractReplacesSymlinkWithFile(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	target := filepath.Join(outside, "victim")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, filepath.Join(dir, "f"))
	data := makeTar(t, entry{name: "f", typ: tar.TypeReg, body: "new"})
	if _, err := Extract(context.Background(), bytes.NewReader(data), dir, 0); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatal("wrote through an existing symlink")
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "f")); !fi.Mode().IsRegular() {
		t.Fatal("symlink not replaced by a file")
	}
}

func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "/abs", "a/../b", "./a", "a//b/", ".", "..", "a/..", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		clean, err := CleanName(name)
		if err != nil {
			return
		}
		if strings.HasPrefix(clean, "/") || clean == ".." || strings.HasPrefix(clean, "../") || strings.Contains(clean, "/../") {
			t.Fatalf("%q cleaned to escaping %q", name, clean)
		}
		if !filepath.IsLocal(clean) && clean != "." {
			t.Fatalf("%q cleaned to non-local %q", name, clean)
		}
	})
}

func FuzzExtract(f *testing.F) {
	f.Add(makeTar(f, entry{name: "a", typ: tar.TypeReg, body: "x"}))
	f.Add(makeTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "/"}, entry{name: "l/x", typ: tar.TypeReg}))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "target")
		os.Mkdir(dir, 0o755)
		Extract(context.Background(), bytes.NewReader(data), dir, 0)
		entries, _ := os.ReadDir(parent)
		if len(entries) != 1 {
			t.Fatalf("extraction wrote next to the target: %v", entries)
		}
	})
}

func TestExtractSizeLimit(t *testing.T) {
	data := makeTar(t, entry{name: "a", typ: tar.TypeReg, body: "12345"}, entry{name: "b", typ: tar.TypeReg, body: "67890"})
	if _, err := Extract(context.Background(), bytes.NewReader(data), t.TempDir(), 8); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	if _, err := Extract(context.Background(), bytes.NewReader(data), t.TempDir(), 10); err != nil {
		t.Fatal(err)
	}
}
