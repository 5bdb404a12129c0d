package workspace

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// FuzzReadEntries: the entries section decides guest file names and index
// content; any accepted record must name a safe path, in order.
func FuzzReadEntries(f *testing.F) {
	f.Add([]byte("100644 " + strings.Repeat("ab", 20) + " -\ta.txt\x00100755 " + strings.Repeat("01", 20) + " ds\tb/c\x00"))
	f.Add([]byte("120000 " + strings.Repeat("ff", 20) + " i\tlink\x00"))
	f.Add([]byte("100644 zz -\t../x\x00"))
	f.Add([]byte("100644 " + strings.Repeat("ab", 20) + " -\t.git/config\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := readEntries(bytes.NewReader(data), 20)
		if err != nil {
			return
		}
		prev := ""
		for i, e := range entries {
			if p, err := repoPath(e.path); err != nil || p != e.path {
				t.Fatalf("accepted unsafe path %q", e.path)
			}
			if i > 0 && e.path <= prev {
				t.Fatalf("accepted out-of-order %q after %q", e.path, prev)
			}
			if len(e.oid) != 20 {
				t.Fatalf("accepted object id of %d bytes", len(e.oid))
			}
			prev = e.path
		}
		// What was accepted survives a round trip.
		var buf bytes.Buffer
		if err := writeEntries(&buf, entries); err != nil {
			t.Fatal(err)
		}
		again, err := readEntries(&buf, 20)
		if err != nil || len(again) != len(entries) {
			t.Fatalf("round trip: %v (%d vs %d)", err, len(again), len(entries))
		}
	})
}

// FuzzReadBundleHeader: a bundle header from the wire never panics and
// only yields ref names under refs/ (or HEAD) and hex object ids.
func FuzzReadBundleHeader(f *testing.F) {
	f.Add([]byte("# v2 git bundle\n" + strings.Repeat("ab", 20) + " refs/heads/main\n\nPACK"))
	f.Add([]byte("# v3 git bundle\n@object-format=sha256\n-" + strings.Repeat("cd", 32) + " msg\n" + strings.Repeat("cd", 32) + " HEAD\n\n"))
	f.Add([]byte("# v2 git bundle\nnot a ref\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readBundleHeader(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		for _, r := range h.refs {
			if !isHex(r.Object) || (r.Name != "HEAD" && !strings.HasPrefix(r.Name, "refs/")) {
				t.Fatalf("accepted ref %+v", r)
			}
		}
	})
}
