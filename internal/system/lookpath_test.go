package system

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestLookPathIn(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "tool"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "data"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "local"), []byte("#!/bin/sh\n"), 0o755)
	os.Mkdir(filepath.Join(dir, "other"), 0o755)
	os.WriteFile(filepath.Join(dir, "other", "data"), []byte("#!/bin/sh\n"), 0o755)

	tests := []struct {
		name, file, path string
		want             string
		err              error // matched with errors.Is
	}{
		{"in path", "tool", bin, filepath.Join(bin, "tool"), nil},
		{"first executable wins", "data", bin + ":" + filepath.Join(dir, "other"), filepath.Join(dir, "other", "data"), nil},
		{"relative path entry", "tool", "bin", filepath.Join(dir, "bin", "tool"), nil},
		{"empty entry is dir", "local", ":" + bin, filepath.Join(dir, "local"), nil},
		{"slash relative", "./local", "", "./local", nil},
		{"absolute", filepath.Join(bin, "tool"), "", filepath.Join(bin, "tool"), nil},
		{"missing", "nope", bin, "", ErrNotFound},
		{"missing is not exist", "nope", bin, "", fs.ErrNotExist},
		{"missing absolute", "/nonexistent/nope", bin, "", syscall.ENOENT},
		{"not executable only", "data", bin, "", syscall.EACCES},
		{"directory", bin, "", "", syscall.EISDIR},
	}
	for _, tt := range tests {
		got, err := LookPathIn(tt.file, tt.path, dir)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("%s: got %q %v, want %v", tt.name, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: got %q %v, want %q", tt.name, got, err, tt.want)
		}
	}
}
