package vmm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Base claims nothing and changes nothing: a driver embedding it gets a
// raw copy of the root disk, the image's compressed kernel, no extra
// arguments, no jailer, and ErrNotSupported where it has no answer.
func TestBaseDefaults(t *testing.T) {
	ctx := context.Background()
	var b vmm.Base
	if b.Info() != (vmm.Info{}) {
		t.Fatalf("Base.Info claims %+v", b.Info())
	}
	imgDir, vmDir := t.TempDir(), t.TempDir()
	img := vmm.Image{Name: "base", Kernel: filepath.Join(imgDir, "vmlinuz"), Rootfs: filepath.Join(imgDir, "rootfs.ext4")}
	if k, err := b.Kernel(img); err != nil || k != img.Kernel {
		t.Fatalf("kernel %q %v", k, err)
	}
	if _, err := b.Kernel(vmm.Image{Name: "bare"}); err == nil {
		t.Fatal("an image without a kernel booted")
	}
	root := b.RootDisk(img, vmDir)
	if root.Path != filepath.Join(vmDir, paths.FileRootRaw) || root.Format != "raw" || len(root.Backing) != 0 {
		t.Fatalf("root disk %+v", root)
	}
	os.WriteFile(img.Rootfs, []byte("root filesystem"), 0o644)
	if err := b.MakeRootDisk(ctx, &system.Fake{Strict: true}, img, root); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(root.Path); string(got) != "root filesystem" {
		t.Fatalf("root disk holds %q", got)
	}
	if b.KernelArgs("tcg") != nil || b.Validate(vmm.Spec{}) != nil || b.HostChecks(ctx, nil, vmm.Need{Required: true}) != nil {
		t.Fatal("Base adds arguments, refuses a spec or checks the host")
	}
	if b.UsesJailer(true, vmm.Process{}) {
		t.Fatal("Base runs a jailer")
	}
	if _, _, err := b.ProbeKVM(ctx, img); !errors.Is(err, vmm.ErrNotSupported) {
		t.Fatalf("probe: %v", err)
	}
	if _, err := b.Status(ctx, vmDir, vmm.Process{}); !errors.Is(err, vmm.ErrNotSupported) {
		t.Fatalf("status: %v", err)
	}
	if err := b.Remove(ctx, vmDir, vmm.Process{}); err != nil {
		t.Fatal(err)
	}
}
