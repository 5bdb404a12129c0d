package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/system"
)

// allocated returns the bytes a file really occupies on disk.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

// A seed file claiming a huge size with no data blocks must stay a hole
// when copied (image import, every vm create): io.Copy wrote every zero.
func TestCopyTreeKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "seed")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(src, "big")
	if err := os.WriteFile(big, []byte("head"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, 256<<20); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "out")
	if err := CopyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(dst, "big")
	fi, err := os.Stat(got)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 256<<20 || fi.Mode().Perm() != 0o640 {
		t.Fatalf("copy: size %d mode %v", fi.Size(), fi.Mode())
	}
	if a := allocated(t, got); a > 1<<20 {
		t.Fatalf("copy of a 256 MiB hole allocates %d bytes: holes were written out", a)
	}
	b, _ := os.ReadFile(got)
	if string(b[:4]) != "head" {
		t.Fatalf("copy lost data: %q", b[:4])
	}
}

// An image-controlled file read into memory is capped.
func TestReadTreeFileCapped(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "os-release")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, maxTreeFile+1); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	_, err = readTreeFile(root, "os-release")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "os-release") {
		t.Fatalf("want a size error naming the file, got %v", err)
	}
}

// debugfsFake answers `ls -p` of / and of /root's inode with listing.
func debugfsFake(rootListing string) *system.Fake {
	return &system.Fake{Handler: func(ctx context.Context, c system.FakeCall) ([]byte, error) {
		if len(c.Argv) < 3 || c.Argv[0] != "debugfs" {
			return nil, fmt.Errorf("unexpected %q", c.Cmd)
		}
		switch c.Argv[2] {
		case "ls -p /":
			return []byte("/2/040755/0/0/.//\n/2/040755/0/0/..//\n/12/040700/0/0/root//\n"), nil
		case "ls -p <12>":
			return []byte(rootListing), nil
		case "ls -p <13>":
			return []byte("/13/040755/0/0/.//\n/12/040700/0/0/..//\n/14/100644/0/0/f/3221225472/\n"), nil
		}
		if strings.HasPrefix(c.Argv[2], "rdump ") {
			return nil, errors.New("rdump must not run")
		}
		return nil, fmt.Errorf("unexpected %q", c.Cmd)
	}}
}

func TestReadExt4SeedRefusesHugeFile(t *testing.T) {
	listing := "/12/040700/0/0/.//\n/2/040755/0/0/..//\n/13/100644/0/0/f/" + fmt.Sprint(int64(maxSeedBytes)+1) + "/\n"
	err := ReadExt4Seed(context.Background(), debugfsFake(listing), "rootfs.ext4", filepath.Join(t.TempDir(), "seed"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "/root/f") {
		t.Fatalf("want a size error naming /root/f, got %v", err)
	}
}

func TestReadExt4SeedRefusesHugeTotal(t *testing.T) {
	// Two 3 GiB files: each under the cap, together over it.
	listing := "/12/040700/0/0/.//\n/2/040755/0/0/..//\n/15/100644/0/0/a/3221225472/\n/13/040755/0/0/d//\n"
	err := ReadExt4Seed(context.Background(), debugfsFake(listing), "rootfs.ext4", filepath.Join(t.TempDir(), "seed"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "in all") {
		t.Fatalf("want a total size error, got %v", err)
	}
}

// A listing bigger than any valid one is refused without being buffered
// whole.
func TestReadExt4SeedCapsListing(t *testing.T) {
	f := debugfsFake("")
	var caps []int64
	inner := f.Handler
	f.Handler = func(ctx context.Context, c system.FakeCall) ([]byte, error) {
		caps = append(caps, c.MaxStdout)
		return inner(ctx, c)
	}
	ReadExt4Seed(context.Background(), f, "rootfs.ext4", filepath.Join(t.TempDir(), "seed"))
	if len(caps) == 0 {
		t.Fatal("no debugfs call")
	}
	for _, c := range caps {
		if c <= 0 {
			t.Fatalf("debugfs ls ran with no output cap: %v", caps)
		}
	}
}
