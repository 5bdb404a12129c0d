package daemon

import (
	"context"
	"fmt"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// requestNetMode is the network mode a create asks for (validateNet has
// filled the config's default).
func requestNetMode(req api.CreateVMRequest) string {
	if req.Net == "" {
		return vmm.NetUser
	}
	return req.Net
}

// resolveVMM fills req.VMM: the flag, else the config, where "auto" means
// a preferred driver (Firecracker) when it can run this VM (its host
// checks pass, the VM's network fits it, KVM passes the real boot probe
// if it cannot emulate) and the fallback driver (QEMU) otherwise.
// Explicit choices that cannot work fail here, before anything exists.
func (d *Daemon) resolveVMM(ctx context.Context, req *api.CreateVMRequest, img store.Image) error {
	if req.VMM == "" {
		req.VMM = d.cfg.VM.VMM
	}
	netMode := requestNetMode(*req)
	if req.VMM == config.VMMAuto || req.VMM == "" {
		return d.autoVMM(ctx, req, img, netMode)
	}
	drv, ok := d.drivers[req.VMM]
	if !ok {
		return api.Errorf(api.CodeInvalid, "use "+d.vmmFlags(), "unknown VMM %q", req.VMM)
	}
	return d.vmmPreflight(ctx, drv, netMode, req.Jailer, vmm.Process{})
}

// autoVMM picks the VMM for `--vmm auto`.
func (d *Daemon) autoVMM(ctx context.Context, req *api.CreateVMRequest, img store.Image, netMode string) error {
	fallback := d.fallbackDriver()
	if fallback == nil {
		return api.Errorf(api.CodeUnavailable, "", "no VMM driver")
	}
	req.VMM = fallback.Name()
	if req.Jailer {
		// --jailer with auto asks for a jailing VMM explicitly enough.
		if jd := d.jailerDriver(); jd != nil {
			req.VMM = jd.Name()
			return d.vmmPreflight(ctx, jd, netMode, true, vmm.Process{})
		}
		return d.vmmPreflight(ctx, fallback, netMode, true, vmm.Process{})
	}
	for _, drv := range d.preferredDrivers() {
		info := drv.Info()
		if netMode != vmm.NetTap && !info.UserNet {
			continue
		}
		if !checksOK(drv.HostChecks(ctx, d.runner, vmm.Need{Required: true})) {
			continue
		}
		if !info.Emulates && d.accelFor(ctx, img).Accel != "kvm" {
			continue
		}
		req.VMM = drv.Name()
		return nil
	}
	return nil
}

func checksOK(checks []doctor.Check) bool {
	for _, c := range checks {
		if c.Status != doctor.OK {
			return false
		}
	}
	return true
}

// vmmFlags is "--vmm qemu or --vmm firecracker", for hints.
func (d *Daemon) vmmFlags() string {
	var flags []string
	for _, drv := range d.driverList() {
		flags = append(flags, "--vmm "+drv.Name())
	}
	return strings.Join(flags, " or ")
}

// vmmPreflight fails fast when drv cannot run a VM here: a jailer it
// lacks, its host checks, a network it has no stack for. requested says
// --jailer was given; p is the VM's recorded VMM (a restart), if any.
func (d *Daemon) vmmPreflight(ctx context.Context, drv vmm.Driver, netMode string, requested bool, p vmm.Process) error {
	info := drv.Info()
	if requested && !info.Jailer {
		other, title := "a jailing VMM", "another VMM's"
		if jd := d.jailerDriver(); jd != nil {
			other, title = jd.Name(), jd.Info().Title
		}
		return api.Errorf(api.CodeInvalid, "drop --jailer, or use --vmm "+other, "--jailer is a %s option; this VM would run under %s", title, info.Title)
	}
	for _, c := range drv.HostChecks(ctx, d.runner, vmm.Need{Required: true, Jailer: drv.UsesJailer(requested, p)}) {
		if c.Status == doctor.Fail {
			return api.Errorf(api.CodeUnavailable, c.Fix, "cannot run %s here: %s", info.Title, c.Detail)
		}
	}
	if netMode != vmm.NetTap && !info.UserNet {
		hint := fmt.Sprintf("create it with --vmm %s --net tap", drv.Name())
		if fb := d.fallbackDriver(); fb != nil && fb != drv {
			hint += ", or use --vmm " + fb.Name()
		}
		return api.Errorf(api.CodeInvalid, hint, "%s needs --net tap: it has no user-mode networking", info.Title)
	}
	return nil
}

// vmmStatus asks a running VM's VMM for its state over its control
// socket (QMP, Firecracker's API).
func (d *Daemon) vmmStatus(ctx context.Context, vm store.VM) (string, error) {
	return d.driverFor(vm).Status(ctx, vm.Dir, d.proc(vm))
}

// jailed says whether vm runs under its VMM's jailer: asked for, the
// config says so for all, or its first boot recorded a jail.
func (d *Daemon) jailed(vm store.VM, requested bool) bool {
	return d.driverFor(vm).UsesJailer(requested, d.proc(vm))
}

// removeVMMLeftovers removes what a driver keeps outside the VM directory
// (a Firecracker jail).
func (d *Daemon) removeVMMLeftovers(ctx context.Context, vm store.VM) error {
	drv := d.driverFor(vm)
	if err := drv.Remove(ctx, vm.Dir, d.proc(vm)); err != nil {
		return fmt.Errorf("remove %s leftovers: %w", drv.Name(), err)
	}
	return nil
}

// defaultVMMCheck tells `banger doctor` which VMM new VMs get and why.
func (d *Daemon) defaultVMMCheck(ctx context.Context, kvm bool) doctor.Check {
	c := doctor.Check{Name: "vmm", Status: doctor.OK}
	if _, ok := d.drivers[d.cfg.VM.VMM]; ok {
		c.Detail = d.cfg.VM.VMM + " (set by [vm] vmm in the config)"
		return c
	}
	fallback := d.fallbackDriver()
	if fallback == nil {
		c.Status, c.Detail = doctor.Fail, "no VMM driver"
		return c
	}
	c.Detail = "auto: " + fallback.Name()
	// The preferred drivers are KVM-only and TAP-only (Firecracker); the
	// detail says when auto picks the first.
	if pref := d.preferredDrivers(); len(pref) > 0 {
		p := pref[0]
		ok := checksOK(p.HostChecks(ctx, d.runner, vmm.Need{Required: true}))
		switch {
		case ok && kvm:
			c.Detail = fmt.Sprintf("auto: %s for --net tap VMs (binary present, KVM boots guests), %s for user networking", p.Name(), fallback.Name())
		case ok:
			c.Detail = fmt.Sprintf("auto: %s (%s is installed but KVM does not boot guests here)", fallback.Name(), p.Name())
		default:
			c.Detail = fmt.Sprintf("auto: %s (%s not installed)", fallback.Name(), p.Name())
		}
	}
	return c
}
