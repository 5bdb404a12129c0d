package tarx

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/escapetest"
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

// FuzzExtract extracts a fuzzed stream into a target deep inside a fresh
// tree of decoys (escapetest) and fails when anything anywhere outside the
// target changed, not only next to it. Absolute link targets are re-rooted
// into that tree so an escape through one is visible. As root, the rootfs
// variant (ownership, hard links) is checked the same way.
func FuzzExtract(f *testing.F) {
	f.Add(makeTar(f, entry{name: "a", typ: tar.TypeReg, body: "x"}))
	f.Add(makeTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "/"}, entry{name: "l/x", typ: tar.TypeReg}))
	f.Add(makeTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "/etc"}, entry{name: "l/passwd", typ: tar.TypeReg, body: "pwned"}))
	f.Add(makeTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "../../sib/deep"}, entry{name: "l/file", typ: tar.TypeReg, body: "pwned"}))
	f.Add(makeTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "../peer"}, entry{name: "l/new", typ: tar.TypeReg, body: "x"}))
	f.Add(makeTar(f, entry{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}, entry{name: "h", typ: tar.TypeReg, body: "pwned"}))
	f.Add(makeTar(f, entry{name: "d", typ: tar.TypeDir, mode: 0o755}, entry{name: "d/../../x", typ: tar.TypeReg}))
	f.Fuzz(func(t *testing.T, data []byte) {
		extractors := []func(context.Context, io.Reader, string, int64) (Stats, error){Extract}
		if os.Geteuid() == 0 {
			extractors = append(extractors, ExtractRootfs)
		}
		for _, extract := range extractors {
			box := escapetest.New(t)
			in := data
			if re, ok := box.RerootTar(data); ok {
				in = re
			}
			extract(context.Background(), bytes.NewReader(in), box.Target, 1<<20)
			box.Check(t)
		}
	})
}

func TestExtractSizeLimit(t *testing.T) {
	data := makeTar(t, entry{name: "a", typ: tar.TypeReg, body: "12345"}, entry{name: "b", typ: tar.TypeReg, body: "67890"})
	// Each entry also counts a 512-byte header.
	if _, err := Extract(context.Background(), bytes.NewReader(data), t.TempDir(), 2*512+8); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	if _, err := Extract(context.Background(), bytes.NewReader(data), t.TempDir(), 2*512+10); err != nil {
		t.Fatal(err)
	}
}

func TestExtractRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("keeping ownership needs root")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []*tar.Header{
		{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 2},
		{Name: "usr/bin/su2", Typeflag: tar.TypeLink, Linkname: "usr/bin/su"},
		{Name: "var/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "var/mail", Typeflag: tar.TypeDir, Mode: 0o2775, Gid: 8},
		{Name: "home/u/f", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000, Size: 2},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
	}
	for _, h := range hdrs {
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte("ok"))
		}
	}
	tw.Close()
	dir := t.TempDir()
	st, err := ExtractRootfs(context.Background(), &buf, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 1 {
		t.Errorf("skipped %d, want the device node", st.Skipped)
	}
	fi, _ := os.Stat(filepath.Join(dir, "usr/bin/su"))
	if fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("su lost setuid: %v", fi.Mode())
	}
	a, _ := os.Stat(filepath.Join(dir, "usr/bin/su2"))
	if !os.SameFile(fi, a) {
		t.Errorf("hard link is not the same file")
	}
	var sys = func(p string) (uint32, uint32) {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		s := fi.Sys().(*syscall.Stat_t)
		return s.Uid, s.Gid
	}
	if u, g := sys("home/u/f"); u != 1000 || g != 1000 {
		t.Errorf("home/u/f owner %d:%d", u, g)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "var/mail")); fi.Mode()&os.ModeSetgid == 0 {
		t.Errorf("var/mail lost setgid: %v", fi.Mode())
	}

	// A hard link may not name a file outside the target.
	var evil bytes.Buffer
	tw = tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Name: "passwd", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"})
	tw.Close()
	if _, err := ExtractRootfs(context.Background(), &evil, t.TempDir(), 0); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("escaping hard link: %v", err)
	}
	// Plain Extract still refuses hard links and devices.
	if _, err := Extract(context.Background(), bytes.NewReader(makeTar(t, entry{name: "l", link: "x", typ: tar.TypeLink})), t.TempDir(), 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Extract with a hard link: %v", err)
	}
}

// Empty files, directories and links carry no data but each costs an
// inode and a header: they count against the byte cap, 512 bytes each.
func TestExtractCountsHeaders(t *testing.T) {
	var entries []entry
	for i := range 20 {
		entries = append(entries, entry{name: fmt.Sprintf("e%d", i), typ: tar.TypeReg})
	}
	data := makeTar(t, entries...)
	if _, err := Extract(context.Background(), bytes.NewReader(data), t.TempDir(), 4<<10); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("20 empty files under a 4 KiB cap: want ErrTooLarge, got %v", err)
	}
}

// An inode bomb: more entries than allowed is refused however small.
func TestExtractEntryLimit(t *testing.T) {
	var entries []entry
	for i := range 5 {
		entries = append(entries, entry{name: fmt.Sprintf("d%d", i), typ: tar.TypeDir, mode: 0o755})
	}
	data := makeTar(t, entries...)
	_, err := ExtractWith(context.Background(), bytes.NewReader(data), t.TempDir(), Options{MaxEntries: 4})
	if !errors.Is(err, ErrTooManyEntries) {
		t.Fatalf("want ErrTooManyEntries, got %v", err)
	}
	if _, err := ExtractWith(context.Background(), bytes.NewReader(data), t.TempDir(), Options{MaxEntries: 5}); err != nil {
		t.Fatal(err)
	}
}
