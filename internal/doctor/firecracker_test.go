package doctor

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/bangerdev/banger/internal/system"
)

func TestParseFirecrackerVersion(t *testing.T) {
	good := map[string][3]int{
		"Firecracker v1.8.0\n":                      {1, 8, 0},
		"Firecracker v1.12.1\n\nSupported snapshot": {1, 12, 1},
		"Firecracker v1.9.0-dev":                    {1, 9, 0},
	}
	for in, want := range good {
		if got, err := ParseFirecrackerVersion(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "firecracker 1.8.0", "Firecracker 1.8.0", "Firecracker v1.8", "Firecracker vx.y.z", "Firecracker v1.-1.0"} {
		if _, err := ParseFirecrackerVersion(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzParseFirecrackerVersion(f *testing.F) {
	for _, s := range []string{"Firecracker v1.8.0\n", "Firecracker v1.9.0-dev", "", "Firecracker v99999999999999999999.0.0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseFirecrackerVersion(s)
		if err == nil && (v[0] < 0 || v[1] < 0 || v[2] < 0) {
			t.Fatalf("negative version %v from %q", v, s)
		}
	})
}

func TestFirecrackerCheck(t *testing.T) {
	ctx := context.Background()
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	if c := Firecracker(ctx, (&system.Fake{}), true); c.Status != Fail || c.Fix == "" || !c.Required {
		t.Fatalf("missing, required: %+v", c)
	}
	if c := Firecracker(ctx, (&system.Fake{}), false); c.Status != Warn || c.Required {
		t.Fatalf("missing, optional: %+v", c)
	}
	fc := filepath.Join(bin, "firecracker")
	os.WriteFile(fc, []byte("#!/bin/sh\n"), 0o755)
	old := (&system.Fake{}).On(fc+" --version", "Firecracker v1.7.0\n", nil)
	if c := Firecracker(ctx, old, true); c.Status != Fail {
		t.Fatalf("1.7 accepted: %+v", c)
	}
	cur := (&system.Fake{}).On(fc+" --version", "Firecracker v1.10.1\n", nil)
	if c := Firecracker(ctx, cur, true); c.Status != OK {
		t.Fatalf("1.10.1 refused: %+v", c)
	}
}
