package escapetest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// recorder is a testing.TB that notes Fatalf instead of stopping.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

// TestCheckSeesEscapes: every kind of write outside the target, however
// far from it, is reported; writes inside are not.
func TestCheckSeesEscapes(t *testing.T) {
	escapes := map[string]func(s *Sandbox) error{
		"file deep in a sibling": func(s *Sandbox) error {
			return os.WriteFile(filepath.Join(s.Base, "up/sib/deep/new"), []byte("x"), 0o644)
		},
		"overwrite at the top": func(s *Sandbox) error {
			return os.WriteFile(filepath.Join(s.Base, "etc/passwd"), []byte("pwned"), 0o644)
		},
		"chmod a decoy": func(s *Sandbox) error { return os.Chmod(filepath.Join(s.Base, "decoy"), 0o777) },
		"created and removed (mtime)": func(s *Sandbox) error {
			time.Sleep(10 * time.Millisecond)
			p := filepath.Join(s.Base, "up/work/peer/tmp")
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return err
			}
			return os.Remove(p)
		},
		"retargeted link": func(s *Sandbox) error {
			p := filepath.Join(s.Base, "up/sib/link")
			os.Remove(p)
			return os.Symlink("/", p)
		},
		"removed decoy": func(s *Sandbox) error { return os.Remove(filepath.Join(s.Base, "up/decoy")) },
	}
	for name, escape := range escapes {
		s := New(t)
		if err := escape(s); err != nil {
			t.Fatal(err)
		}
		r := &recorder{TB: t}
		s.Check(r)
		if r.failed == "" {
			t.Errorf("%s: not seen", name)
		}
	}
	s := New(t)
	if err := os.MkdirAll(filepath.Join(s.Target, "a/b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Target, "a/b/c"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &recorder{TB: t}
	s.Check(r)
	if r.failed != "" {
		t.Errorf("a write inside the target was reported: %s", r.failed)
	}
	if got := s.Reroot("/etc"); got != s.Base+"/etc" {
		t.Errorf("Reroot(/etc) = %q", got)
	}
}
