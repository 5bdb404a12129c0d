package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Firecracker boots the ELF vmlinux from Base's raw root disk; an image
// without one fails with a hint before anything is started.
func TestDriverBoot(t *testing.T) {
	d := &Driver{}
	info := d.Info()
	if info.Emulates || info.UserNet || !info.Jailer || !info.Preferred || info.Console != vmm.ConsoleFile || info.OwnUser != vmm.OwnUserJailed {
		t.Fatalf("info %+v", info)
	}
	img := vmm.Image{Name: "base", Kernel: "/img/vmlinuz", Rootfs: "/img/rootfs.ext4"}
	_, err := d.Kernel(img)
	var ae *api.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "no ELF vmlinux") || !strings.Contains(ae.Hint, "image build") {
		t.Fatalf("image without vmlinux: %v", err)
	}
	img.Vmlinux = "/img/vmlinux"
	if k, err := d.Kernel(img); err != nil || k != "/img/vmlinux" {
		t.Fatalf("kernel %q %v", k, err)
	}
	if root := d.RootDisk(img, "/vms/v1"); root.Format != "raw" || len(root.Backing) != 0 {
		t.Fatalf("root disk %+v", root)
	}
	if d.KernelArgs("kvm") != nil {
		t.Fatal("extra kernel args")
	}
	if err := d.Validate(vmm.Spec{Net: vmm.Net{Mode: vmm.NetUser}}); !errors.Is(err, ErrNeedsTap) {
		t.Fatalf("user net: %v", err)
	}
}

// A VM runs jailed when asked, when the config jails all, or when its
// first boot recorded a jail.
func TestDriverUsesJailer(t *testing.T) {
	d := &Driver{}
	jailed := `{"jail":{"id":"v1","dir":"/srv/jailer/firecracker/v1","root":"/srv/jailer/firecracker/v1/root"}}`
	cases := []struct {
		d         *Driver
		requested bool
		state     string
		want      bool
	}{
		{d, false, "", false},
		{d, true, "", true},
		{d, false, `{"api_socket":"/x"}`, false},
		{d, false, jailed, true},
		{&Driver{JailAll: true}, false, "", true},
	}
	for _, c := range cases {
		if got := c.d.UsesJailer(c.requested, vmm.Process{State: c.state}); got != c.want {
			t.Errorf("jailall %v requested %v state %q: %v", c.d.JailAll, c.requested, c.state, got)
		}
	}
}

// The host checks are the binary's (a failure only when required) and
// the jailer's when VMs use it.
func TestDriverHostChecks(t *testing.T) {
	ctx := context.Background()
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	d := &Driver{}
	r := system.Exec{}
	checks := d.HostChecks(ctx, r, vmm.Need{})
	if len(checks) != 1 || checks[0].Name != "firecracker" || checks[0].Status != doctor.Warn {
		t.Fatalf("missing, optional: %+v", checks)
	}
	if c := d.HostChecks(ctx, r, vmm.Need{Required: true}); c[0].Status != doctor.Fail {
		t.Fatalf("missing, required: %+v", c)
	}
	os.WriteFile(filepath.Join(bin, "firecracker"), []byte("#!/bin/sh\necho Firecracker v1.12.0\n"), 0o755)
	checks = d.HostChecks(ctx, r, vmm.Need{Required: true, Jailer: true})
	if len(checks) != 2 || checks[0].Status != doctor.OK || checks[1].Name != "jailer" || checks[1].Status != doctor.Fail {
		t.Fatalf("with jailer: %+v", checks)
	}
}

// Start's steps, in order; their names say what Start does.
func TestStartSteps(t *testing.T) {
	for restore, want := range map[bool]string{
		false: "check kernel, plan, prepare files, launch, wait for API, configure",
		true:  "check snapshot, plan, prepare files, launch, wait for API, load snapshot",
	} {
		var names []string
		for _, s := range (&Driver{}).startSteps(restore) {
			names = append(names, s.name)
		}
		if got := strings.Join(names, ", "); got != want {
			t.Fatalf("steps %q, want %q", got, want)
		}
	}
}
