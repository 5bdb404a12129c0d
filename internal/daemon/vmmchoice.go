package daemon

import (
	"context"
	"fmt"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// newDrivers builds the VMM drivers a daemon offers, by store.VM.VMM name.
func newDrivers(cfg config.Config) map[string]vmm.Driver {
	fc := cfg.Firecracker
	return map[string]vmm.Driver{
		config.VMMQEMU: &qemu.Driver{},
		config.VMMFirecracker: &firecracker.Driver{
			Binary: fc.Binary,
			Jailer: firecracker.JailerConfig{
				Binary: fc.JailerBinary, UID: fc.UID, GID: fc.GID,
				ChrootBase: fc.ChrootBase, ParentCgroup: fc.ParentCgroup, Cgroups: fc.Cgroups,
				CgroupVersion: fc.CgroupVersion,
			},
		},
	}
}

// requestNetMode is the network mode a create asks for (validateNet has
// filled the config's default).
func requestNetMode(req api.CreateVMRequest) string {
	if req.Net == "" {
		return vmm.NetUser
	}
	return req.Net
}

// resolveVMM fills req.VMM: the flag, else the config, where "auto" means
// Firecracker when it can run this VM (binary >= 1.8, TAP networking,
// KVM passing the real boot probe) and QEMU otherwise. Explicit choices
// that cannot work fail here, before anything exists.
func (d *Daemon) resolveVMM(ctx context.Context, req *api.CreateVMRequest, img store.Image) error {
	if req.VMM == "" {
		req.VMM = d.cfg.VM.VMM
	}
	netMode := requestNetMode(*req)
	switch req.VMM {
	case config.VMMQEMU:
		if req.Jailer {
			return api.Errorf(api.CodeInvalid, "drop --jailer, or use --vmm firecracker", "--jailer is a Firecracker option; this VM would run under QEMU")
		}
		return nil
	case config.VMMFirecracker:
		return d.firecrackerPreflight(ctx, netMode, req.Jailer || d.cfg.Firecracker.Jailer)
	case config.VMMAuto, "":
		req.VMM = config.VMMQEMU
		if netMode != vmm.NetTap || req.Jailer {
			// --jailer with auto asks for Firecracker explicitly enough.
			if req.Jailer {
				req.VMM = config.VMMFirecracker
				return d.firecrackerPreflight(ctx, netMode, true)
			}
			return nil
		}
		if doctor.Firecracker(ctx, d.runner, true).Status != doctor.OK {
			return nil
		}
		if d.accelFor(ctx, img).Accel == "kvm" {
			req.VMM = config.VMMFirecracker
		}
		return nil
	}
	return api.Errorf(api.CodeInvalid, "use --vmm qemu or --vmm firecracker", "unknown VMM %q", req.VMM)
}

// firecrackerPreflight fails fast when Firecracker cannot run a VM here.
func (d *Daemon) firecrackerPreflight(ctx context.Context, netMode string, jailer bool) error {
	checks := []doctor.Check{doctor.Firecracker(ctx, d.runner, true)}
	if jailer {
		checks = append(checks, doctor.Jailer(ctx, d.runner))
	}
	for _, c := range checks {
		if c.Status == doctor.Fail {
			return api.Errorf(api.CodeUnavailable, c.Fix, "cannot run Firecracker here: %s", c.Detail)
		}
	}
	if netMode != vmm.NetTap {
		return api.Errorf(api.CodeInvalid, "create it with --vmm firecracker --net tap, or use --vmm qemu", "Firecracker needs --net tap: it has no user-mode networking")
	}
	return nil
}

// vmmStatus asks a running VM's VMM for its state over its control
// socket (QMP, Firecracker's API).
func (d *Daemon) vmmStatus(ctx context.Context, vm store.VM) (string, error) {
	switch d.driverFor(vm).Name() {
	case config.VMMFirecracker:
		return firecracker.Status(ctx, vm.Dir, d.proc(vm))
	default:
		return qemu.Status(vm.Dir)
	}
}

// jailed says whether a Firecracker VM runs under the jailer: the config
// says so for all, or its first boot recorded a jail.
func (d *Daemon) jailed(vm store.VM, requested bool) bool {
	if vm.VMM != config.VMMFirecracker {
		return false
	}
	return requested || d.cfg.Firecracker.Jailer || firecracker.Jailed(vm.VMMStateJSON)
}

// removeVMMLeftovers removes what a driver keeps outside the VM directory
// (a Firecracker jail).
func (d *Daemon) removeVMMLeftovers(ctx context.Context, vm store.VM) error {
	if r, ok := d.driverFor(vm).(vmm.Remover); ok {
		if err := r.Remove(ctx, vm.Dir, d.proc(vm)); err != nil {
			return fmt.Errorf("remove %s leftovers: %w", d.driverFor(vm).Name(), err)
		}
	}
	return nil
}

// defaultVMMCheck tells `banger doctor` which VMM new VMs get and why.
func (d *Daemon) defaultVMMCheck(ctx context.Context, kvm bool) doctor.Check {
	c := doctor.Check{Name: "vmm", Status: doctor.OK}
	switch d.cfg.VM.VMM {
	case config.VMMQEMU, config.VMMFirecracker:
		c.Detail = d.cfg.VM.VMM + " (set by [vm] vmm in the config)"
		return c
	}
	fc := doctor.Firecracker(ctx, d.runner, true).Status == doctor.OK
	switch {
	case fc && kvm:
		c.Detail = "auto: firecracker for --net tap VMs (binary present, KVM boots guests), qemu for user networking"
	case fc:
		c.Detail = "auto: qemu (firecracker is installed but KVM does not boot guests here)"
	default:
		c.Detail = "auto: qemu (firecracker not installed)"
	}
	return c
}
