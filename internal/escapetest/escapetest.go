// Package escapetest gives extraction fuzzers a way to see an escape
// anywhere, not only next to the target: the extraction runs inside a
// fresh directory tree with decoys around and above the target, and the
// whole tree outside the target is compared before and after. Absolute
// symlink targets in the fuzzed input are re-rooted into that tree, so an
// entry that follows one would land where the comparison looks instead of
// in the real filesystem. It is used only by tests.
package escapetest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Sandbox is one fresh tree: Base/decoy, Base/up/{decoy,sib/...,
// work/{peer/,target/}}; Target is Base/up/work/target.
type Sandbox struct {
	Base, Target string
	before       map[string]string
}

// New builds the tree under a test temporary directory and records it.
func New(t testing.TB) *Sandbox {
	t.Helper()
	base := t.TempDir()
	s := &Sandbox{Base: base, Target: filepath.Join(base, "up", "work", "target")}
	for _, d := range []string{"up/sib/deep", "up/work/peer", "up/work/target", "etc"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{
		"decoy": "base", "up/decoy": "up", "up/sib/deep/file": "deep",
		"up/work/peer/file": "peer", "etc/passwd": "root:x:0:0::/root:/bin/sh\n",
	} {
		if err := os.WriteFile(filepath.Join(base, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../decoy", filepath.Join(base, "up", "sib", "link")); err != nil {
		t.Fatal(err)
	}
	s.before = s.outside(t)
	return s
}

// Reroot maps an absolute symlink target into the sandbox ("/etc" becomes
// Base+"/etc"); relative targets are kept as they are.
func (s *Sandbox) Reroot(link string) string {
	if strings.HasPrefix(link, "/") {
		return s.Base + link
	}
	return link
}

// RerootTar rewrites a tar stream's absolute link names with Reroot. ok is
// false when the stream does not parse to the end (the caller then
// extracts it unchanged).
func (s *Sandbox) RerootTar(data []byte) (out []byte, ok bool) {
	tr := tar.NewReader(bytes.NewReader(data))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, false
		}
		if hdr.Typeflag == tar.TypeSymlink || hdr.Typeflag == tar.TypeLink {
			hdr.Linkname = s.Reroot(hdr.Linkname)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, false
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return nil, false
		}
	}
	if err := tw.Close(); err != nil {
		return nil, false
	}
	return buf.Bytes(), true
}

// Check fails t when anything outside Target differs from when the
// sandbox was made: a new, removed or changed file, directory or link,
// a changed mode or modification time, anywhere in the tree.
func (s *Sandbox) Check(t testing.TB) {
	t.Helper()
	after := s.outside(t)
	var diffs []string
	for p, v := range after {
		if b, ok := s.before[p]; !ok {
			diffs = append(diffs, "created "+p+" ("+v+")")
		} else if b != v {
			diffs = append(diffs, "changed "+p+": "+b+" -> "+v)
		}
	}
	for p := range s.before {
		if _, ok := after[p]; !ok {
			diffs = append(diffs, "removed "+p)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Fatalf("extraction touched the tree outside its target:\n%s", strings.Join(diffs, "\n"))
	}
}

// outside describes every entry of the tree except Target and what is
// under it. Target's own entry is left out too: writing into it changes
// its modification time, which is not an escape.
func (s *Sandbox) outside(t testing.TB) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(s.Base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == s.Target {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v %d", fi.Mode(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		rel, _ := filepath.Rel(s.Base, p)
		m[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", s.Base, err)
	}
	return m
}

// Snapshot renders every entry under dir (path, mode, link target or
// content) so a test can tell whether anything there changed.
func Snapshot(t testing.TB, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		line := fmt.Sprintf("%s %v", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			line += " -> " + l
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += " " + strconv.Quote(string(b))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
