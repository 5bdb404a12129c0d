package system

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// allocated returns the bytes a file occupies on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// makeSparseSource writes a 64 MiB file with 1 MiB of data at each end,
// a zero-filled (but allocated) MiB in the middle, and holes elsewhere.
func makeSparseSource(t *testing.T, path string) []byte {
	t.Helper()
	const size = 64 << 20
	want := make([]byte, size)
	for i := range 1 << 20 {
		want[i] = byte(i%251 + 1)
		want[size-(1<<20)+i] = byte(i%241 + 1)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(want[:1<<20], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 32<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(want[size-(1<<20):], size-(1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o640); err != nil {
		t.Fatal(err)
	}
	return want
}

func TestCloneFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "rootfs.ext4")
	dst := filepath.Join(dir, "clone.ext4")
	want := makeSparseSource(t, src)

	method, err := CloneFileMethod(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if method != CloneReflink && method != CloneSparseCopy {
		t.Fatalf("method = %q", method)
	}
	t.Logf("clone method on %s: %s", dir, method)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("clone content differs from source")
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("clone mode = %v, want 0640", fi.Mode().Perm())
	}
	if method == CloneSparseCopy && allocated(t, src) < int64(len(want)) {
		// The source is sparse here, so the copy must be too, and the
		// allocated-but-zero MiB must not have been written.
		if a := allocated(t, dst); a > 2<<20+64<<10 {
			t.Errorf("sparse copy allocated %d bytes, want about 2 MiB", a)
		}
	}

	// Cloning over an existing file replaces it entirely.
	if err := os.WriteFile(dst, bytes.Repeat([]byte{1}, 100<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CloneFile(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
		t.Fatal("clone over existing file differs from source")
	}
}

func TestSparseCopyDirect(t *testing.T) {
	// Exercise the fallback even where the filesystem reflinks.
	tests := []struct {
		name string
		data func() []byte
	}{
		{"empty", func() []byte { return nil }},
		{"tiny", func() []byte { return []byte("x") }},
		{"all zero", func() []byte { return make([]byte, 3<<20+17) }},
		{"unaligned tail", func() []byte {
			b := make([]byte, 2<<20+5)
			copy(b[len(b)-3:], "end")
			copy(b[5000:], "middle")
			return b
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			want := tt.data()
			src := filepath.Join(dir, "src")
			if err := os.WriteFile(src, want, 0o600); err != nil {
				t.Fatal(err)
			}
			in, err := os.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			out, err := os.Create(filepath.Join(dir, "dst"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			if err := sparseCopy(context.Background(), in, out, int64(len(want))); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("copy differs: got %d bytes, want %d", len(got), len(want))
			}
		})
	}
}

func TestCloneFileErrors(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if err := CloneFile(ctx, filepath.Join(dir, "missing"), filepath.Join(dir, "dst")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing source: err = %v", err)
	}
	if err := CloneFile(ctx, dir, filepath.Join(dir, "dst")); err == nil {
		t.Error("cloning a directory succeeded")
	}

	src := filepath.Join(dir, "src")
	makeSparseSource(t, src)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	dst := filepath.Join(dir, "dst")
	method, err := CloneFileMethod(cctx, src, dst)
	switch {
	case method == CloneReflink:
		// A reflink finishes before the context matters.
	case !errors.Is(err, context.Canceled):
		t.Errorf("cancelled clone: err = %v", err)
	default:
		if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
			t.Error("failed clone left a partial destination behind")
		}
	}
}

func TestCreateSparse(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "work.ext4")
	if err := CreateSparse(p, 4<<30); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 4<<30 {
		t.Errorf("size = %d", fi.Size())
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v", fi.Mode().Perm())
	}
	if a := allocated(t, p); a > 1<<20 {
		t.Errorf("sparse file allocated %d bytes", a)
	}
	// Resize an existing file, both ways.
	for _, size := range []int64{8 << 30, 1 << 20} {
		if err := CreateSparse(p, size); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(p); fi.Size() != size {
			t.Errorf("resized to %d, want %d", fi.Size(), size)
		}
	}
	if err := CreateSparse(p, -1); err == nil {
		t.Error("negative size accepted")
	}
	if err := CreateSparse(filepath.Join(dir, "no/such/dir/f"), 1); err == nil {
		t.Error("missing parent accepted")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "known_hosts")
	for _, content := range []string{"first", "second, longer content", ""} {
		if err := WriteFileAtomic(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Fatalf("content = %q, want %q", got, content)
		}
	}
	if err := WriteFileAtomic(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing/f"), nil, 0o600); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	// Relative paths land in the working directory.
	t.Chdir(dir)
	if err := WriteFileAtomic("rel", []byte("r"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "rel")); string(got) != "r" {
		t.Errorf("relative write = %q", got)
	}
}

func TestFreeBytes(t *testing.T) {
	n, err := FreeBytes(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("FreeBytes = 0")
	}
	if _, err := FreeBytes(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: err = %v", err)
	}
}
