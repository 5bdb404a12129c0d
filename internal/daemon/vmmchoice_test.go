package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// On a host without firecracker, `vm create --vmm firecracker` fails
// before anything exists: no VM row, no VM directory.
func TestCreateFirecrackerMissingFailsFast(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	home := t.TempDir()
	d.layout = paths.Resolve(func(k string) string {
		if k == paths.EnvHome {
			return home
		}
		return ""
	}, os.Getuid())
	d.drivers = newDrivers(d.cfg)
	d.creating = map[string]bool{}
	d.vmLocks = map[string]*vmLock{}
	img := store.Image{Name: "base", Dir: t.TempDir()}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	if err := d.store.SetDefaultImage(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir()) // no firecracker (nor anything else)

	cases := []struct {
		req  api.CreateVMRequest
		want string
		hint string
	}{
		{api.CreateVMRequest{Name: "fc1", VMM: "firecracker"}, "firecracker not found in PATH", "install Firecracker >= 1.8"},
		{api.CreateVMRequest{Name: "fc2", VMM: "kvmtool"}, `unknown VMM "kvmtool"`, "--vmm qemu or --vmm firecracker"},
		{api.CreateVMRequest{Name: "fc3", VMM: "qemu", Jailer: true}, "--jailer is a Firecracker option", "drop --jailer"},
		{api.CreateVMRequest{Name: "fc4", Jailer: true}, "firecracker not found", "install Firecracker"},
	}
	for _, c := range cases {
		_, err := d.CreateVM(ctx, c.req)
		var ae *api.Error
		if !errors.As(err, &ae) || !strings.Contains(ae.Error(), c.want) || !strings.Contains(ae.Hint, c.hint) {
			t.Errorf("%+v: got %v (hint %q), want %q / hint %q", c.req, err, hintOf(err), c.want, c.hint)
		}
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil || len(vms) != 0 {
		t.Fatalf("VMs left behind: %v %v", vms, err)
	}
	if ents, _ := os.ReadDir(d.layout.VMsDir); len(ents) != 0 {
		t.Fatalf("VM dirs left behind: %v", ents)
	}
}

func hintOf(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Hint
	}
	return ""
}

// Firecracker is there, but the VM is on user networking.
func TestCreateFirecrackerNeedsTap(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	bin := t.TempDir()
	fc := bin + "/firecracker"
	os.WriteFile(fc, []byte("#!/bin/sh\necho Firecracker v1.12.0\n"), 0o755)
	t.Setenv("PATH", bin)
	d.runner = system.Exec{}
	d.drivers = newDrivers(d.cfg)
	fcDrv := d.drivers[config.VMMFirecracker]
	err := d.vmmPreflight(ctx, fcDrv, "user", false, vmm.Process{})
	if err == nil || !strings.Contains(err.Error(), "Firecracker needs --net tap") {
		t.Fatalf("got %v", err)
	}
	if err := d.vmmPreflight(ctx, fcDrv, "tap", false, vmm.Process{}); err != nil {
		t.Fatalf("tap refused: %v", err)
	}
	os.WriteFile(fc, []byte("#!/bin/sh\necho Firecracker v1.7.1\n"), 0o755)
	if err := d.vmmPreflight(ctx, fcDrv, "tap", false, vmm.Process{}); err == nil || !strings.Contains(err.Error(), "older than 1.8") {
		t.Fatalf("1.7.1 accepted: %v", err)
	}
	// auto never picks Firecracker for a user-networking VM.
	req := api.CreateVMRequest{}
	d.cfg.VM.VMM = config.VMMAuto
	if err := d.resolveVMM(ctx, &req, store.Image{}); err != nil || req.VMM != config.VMMQEMU {
		t.Fatalf("auto: %q %v", req.VMM, err)
	}
}

// A Firecracker VM boots the image's ELF vmlinux from a raw root disk,
// without QEMU's TCG kernel arguments; a QEMU VM keeps bzImage and qcow2.
func TestVMSpecPerVMM(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	imgDir := t.TempDir()
	img := store.Image{Name: "base", Dir: imgDir}
	vm := &store.VM{ID: "v1", Name: "v1", Dir: "/var/lib/banger/vms/v1", VMM: "firecracker", NetMode: "tap", Accel: "kvm", CPUs: 2, MemoryMiB: 512}
	// A tap VM needs its network and recorded lease for the NIC and
	// kernel arguments.
	var err error
	if d.net, err = d.newNetwork(network.NewFake()); err != nil {
		t.Fatal(err)
	}
	img.ID, img.State = "img1", store.ImageStateManaged
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm.ImageID, vm.State = img.ID, api.VMCreating
	if err := d.store.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.AllocateLease(ctx, vm.ID, netip.MustParsePrefix("172.30.0.0/24"), "bgtestt000001", "02:00:00:00:00:01"); err != nil {
		t.Fatal(err)
	}
	_, err = d.vmSpec(ctx, vm, img)
	var ae *api.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "no ELF vmlinux") || !strings.Contains(ae.Hint, "image build") {
		t.Fatalf("image without vmlinux: %v", err)
	}
	os.WriteFile(imgDir+"/vmlinux", []byte("\x7fELF"), 0o644)
	spec, err := d.vmSpec(ctx, vm, img)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Kernel != imgDir+"/vmlinux" || spec.Disks[0].Format != "raw" || !strings.HasSuffix(spec.Disks[0].Path, "/root.ext4") || spec.Net.Mode != "tap" {
		t.Fatalf("firecracker spec: %+v", spec)
	}
	if strings.Contains(spec.Cmdline, "tsc_early_khz") {
		t.Fatalf("TCG args for a Firecracker VM: %q", spec.Cmdline)
	}
	vm.VMM, vm.Accel, vm.NetMode = "qemu", "tcg", "user"
	spec, err = d.vmSpec(ctx, vm, img)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Kernel != imgDir+"/vmlinuz" || spec.Disks[0].Format != "qcow2" || !strings.Contains(spec.Cmdline, "tsc_early_khz") {
		t.Fatalf("qemu spec: %+v", spec)
	}
}
