package qemu

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// QEMU boots the image's bzImage from a qcow2 overlay named with its
// backing file, adds the TSC rate under TCG only, and refuses a jailer.
func TestDriverBoot(t *testing.T) {
	d := &Driver{}
	info := d.Info()
	if !info.Emulates || !info.UserNet || info.Jailer || info.Preferred || info.Console != vmm.ConsoleSocket || info.OwnUser != vmm.OwnUserAlways {
		t.Fatalf("info %+v", info)
	}
	img := vmm.Image{Name: "base", Kernel: "/img/vmlinuz", Vmlinux: "/img/vmlinux", Rootfs: "/img/rootfs.ext4"}
	if k, err := d.Kernel(img); err != nil || k != "/img/vmlinuz" {
		t.Fatalf("kernel %q %v", k, err)
	}
	root := d.RootDisk(img, "/vms/v1")
	if root.Path != filepath.Join("/vms/v1", paths.FileRootDisk) || root.Format != "qcow2" || len(root.Backing) != 1 || root.Backing[0] != (vmm.Layer{Path: "/img/rootfs.ext4", Format: "raw"}) {
		t.Fatalf("root disk %+v", root)
	}
	f := &system.Fake{Strict: true}
	f.On("qemu-img create", "", nil)
	if err := d.MakeRootDisk(context.Background(), f, img, root); err != nil {
		t.Fatal(err)
	}
	if calls := f.Calls(); len(calls) != 1 || calls[0].Cmd != "qemu-img create -q -f qcow2 -b /img/rootfs.ext4 -F raw "+root.Path {
		t.Fatalf("calls %+v", calls)
	}
	if a := d.KernelArgs("tcg"); len(a) != 1 || !strings.HasPrefix(a[0], "tsc_early_khz=") {
		t.Fatalf("tcg args %q", a)
	}
	if a := d.KernelArgs("kvm"); a != nil {
		t.Fatalf("kvm args %q", a)
	}
	if err := d.Validate(vmm.Spec{Dir: t.TempDir(), Jailer: true}); err == nil || !strings.Contains(err.Error(), "no jailer") {
		t.Fatalf("jailer accepted: %v", err)
	}
	if err := d.Validate(vmm.Spec{Dir: "/" + strings.Repeat("d", 120)}); err == nil {
		t.Fatal("socket path over 108 bytes accepted")
	}
	if err := d.Validate(vmm.Spec{Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
}
