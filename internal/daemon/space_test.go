package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// spaceImage is an image directory with a sparse 4 GiB rootfs holding
// 1 MiB of data and a 10 MiB work seed.
func spaceImage(t *testing.T) store.Image {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, image.FileRootfs)
	if err := system.CreateSparse(root, 4<<30); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(root, os.O_WRONLY, 0)
	f.WriteAt(make([]byte, 1<<20), 1<<30)
	f.Close()
	seed := filepath.Join(dir, image.DirWorkSeed)
	os.MkdirAll(seed, 0o700)
	os.WriteFile(filepath.Join(seed, "blob"), make([]byte, 10<<20), 0o600)
	for _, n := range []string{image.FileKernel, image.FileInitrd} {
		os.WriteFile(filepath.Join(dir, n), make([]byte, 1<<20), 0o644)
	}
	return store.Image{Name: "img", Dir: dir}
}

func spaceDaemon(t *testing.T, free uint64) *Daemon {
	d := testDaemon(t, nil)
	data := t.TempDir()
	d.layout = paths.Layout{DataDir: data, VMsDir: filepath.Join(data, "vms"), ImagesDir: filepath.Join(data, "images"), CacheDir: filepath.Join(data, "cache")}
	for _, p := range []string{d.layout.VMsDir, d.layout.ImagesDir, d.layout.CacheDir} {
		os.MkdirAll(p, 0o700)
	}
	d.statfs = func(string) (uint64, error) { return free, nil }
	d.drivers = newDrivers(d.cfg)
	return d
}

// TestCreateSpaceCountsRealWrites: a create needs what it really writes
// (the work seed, twice at its peak, plus a margin), not the virtual
// size of its sparse disks; short of that it refuses with the figures.
func TestCreateSpaceCountsRealWrites(t *testing.T) {
	img := spaceImage(t)
	// 1 GiB free: less than the 4 GiB rootfs or work disk, but plenty
	// for what a QEMU create writes.
	d := spaceDaemon(t, 1<<30)
	if err := d.checkCreateSpace(img, config.VMMQEMU); err != nil {
		t.Fatalf("create refused although it writes far less than 1 GiB: %v", err)
	}
	d = spaceDaemon(t, 100<<20)
	err := d.checkCreateSpace(img, config.VMMQEMU)
	if !errors.Is(err, system.ErrNoSpace) {
		t.Fatalf("err = %v, want ErrNoSpace", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "create VM needs ~") || !strings.Contains(msg, "in "+d.layout.VMsDir+", 100.0 MiB free") {
		t.Fatalf("message %q lacks the directory and figures", msg)
	}
	// Firecracker copies the rootfs: its data blocks count too.
	d = spaceDaemon(t, 1<<30)
	qemu := estimateCreate(img, d.drivers[config.VMMQEMU])
	fc := estimateCreate(img, d.drivers[config.VMMFirecracker])
	if fc-qemu < 1<<20 || fc > 1<<30 {
		t.Fatalf("firecracker estimate %d vs qemu %d: want the rootfs's allocated bytes added, not its 4 GiB", fc, qemu)
	}
}

// TestImportRefusedWhenDiskLow: image import checks before copying and
// leaves nothing behind.
func TestImportRefusedWhenDiskLow(t *testing.T) {
	img := spaceImage(t)
	if err := image.WriteMeta(img.Dir, image.Meta{Name: "imported", Fingerprint: "fp"}); err != nil {
		t.Fatal(err)
	}
	if err := image.WriteManifest(img.Dir, image.Manifest{}); err != nil {
		t.Fatal(err)
	}
	d := spaceDaemon(t, 200<<20)
	_, err := d.imageEngine().ImportImage(context.Background(), img.Dir)
	if !errors.Is(err, system.ErrNoSpace) || !strings.Contains(err.Error(), d.layout.ImagesDir) {
		t.Fatalf("err = %v", err)
	}
	if ents, _ := os.ReadDir(d.layout.ImagesDir); len(ents) != 0 {
		t.Fatalf("import left %d entries", len(ents))
	}
}

// TestBuildAndDeriveSpace: builds and derives refuse up front when the
// state directory is short, naming it and the figures.
func TestBuildAndDeriveSpace(t *testing.T) {
	img := spaceImage(t)
	d := spaceDaemon(t, 500<<20)
	for name, err := range map[string]error{
		"derive": d.checkDeriveSpace(img),
		"build":  d.checkBuildSpace(false),
	} {
		if !errors.Is(err, system.ErrNoSpace) || !strings.Contains(err.Error(), "500.0 MiB free") || !strings.Contains(err.Error(), d.layout.DataDir) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	d = spaceDaemon(t, 64<<30)
	if err := d.checkDeriveSpace(img); err != nil {
		t.Errorf("derive with 64 GiB free: %v", err)
	}
	if err := d.checkBuildSpace(true); err != nil {
		t.Errorf("build with 64 GiB free: %v", err)
	}
}
