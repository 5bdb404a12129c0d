package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	seed := filepath.Join(dir, "config.json")
	cmdline := filepath.Join(dir, "cmdline")
	root := filepath.Join(dir, "root")
	os.WriteFile(seed, []byte(`{"hostname":"vm1"}`), 0o600)
	os.WriteFile(cmdline, []byte("quiet banger.ip=10.0.2.15/24 banger.gw=10.0.2.2\n"), 0o644)
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"no args", nil, 2, "usage"},
		{"unknown", []string{"bogus"}, 2, `unknown command "bogus"`},
		{"version", []string{"version"}, 0, "dev"},
		{"bad flag", []string{"serve", "--nope"}, 2, "flag provided but not defined"},
		{"supervise without dir", []string{"supervise"}, 2, "usage: banger-agent supervise --dir DIR"},
		{"init", []string{"init", "--root", root, "--seed", seed, "--cmdline", cmdline}, 0, "guest identity applied"},
		{"init without seed", []string{"init", "--root", root, "--seed", filepath.Join(dir, "missing"), "--cmdline", cmdline}, 1, "read seed config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			if code := run(tt.args, &out); code != tt.code {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out.String())
			}
			if !strings.Contains(out.String(), tt.out) {
				t.Fatalf("output lacks %q:\n%s", tt.out, out.String())
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/hostname")); err != nil || string(b) != "vm1\n" {
		t.Fatalf("hostname file: %q %v", b, err)
	}
}
