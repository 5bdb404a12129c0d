package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// accelChoice is the accelerator VMs get and why.
type accelChoice struct {
	Accel  string `json:"accel"`
	Note   string `json:"note"`
	BootID string `json:"boot_id"`
	Probed bool   `json:"probed"`
}

const fileAccelCache = "accel.json"

// chooseAccel applies BANGER_ACCEL, then the config, then the cached probe
// result of this host boot. Probing itself needs a kernel, so it happens
// at the first VM boot (accelFor), not at daemon start.
func (d *Daemon) chooseAccel(ctx context.Context) accelChoice {
	if v := os.Getenv("BANGER_ACCEL"); v == "tcg" || v == "kvm" {
		return accelChoice{Accel: v, Note: "set by BANGER_ACCEL"}
	}
	if d.cfg.Daemon.Accel == "tcg" || d.cfg.Daemon.Accel == "kvm" {
		return accelChoice{Accel: d.cfg.Daemon.Accel, Note: "set by the config file"}
	}
	bootID, _ := system.BootID()
	var cached accelChoice
	if data, err := os.ReadFile(filepath.Join(d.layout.CacheDir, fileAccelCache)); err == nil &&
		json.Unmarshal(data, &cached) == nil && cached.BootID == bootID && cached.Probed {
		return cached
	}
	return accelChoice{Accel: "tcg", Note: "KVM not probed yet (it is probed at the first boot)", BootID: bootID}
}

// accelFor probes KVM once per host boot, with the image's own kernel.
func (d *Daemon) accelFor(ctx context.Context, img store.Image) accelChoice {
	// One probe at a time; a second caller then finds the cached result.
	d.probeMu.Lock()
	defer d.probeMu.Unlock()
	cur := d.currentAccel()
	if cur.Probed || cur.Note == "set by BANGER_ACCEL" || cur.Note == "set by the config file" {
		return cur
	}
	ok, why := d.probeKVM(ctx, img)
	choice := accelChoice{Accel: "tcg", Note: "KVM unusable: " + why, BootID: cur.BootID, Probed: true}
	if ok {
		choice.Accel, choice.Note = "kvm", why
	}
	d.log.Info("KVM probe", "usable", ok, "why", why)
	if data, err := json.Marshal(choice); err == nil {
		_ = system.WriteFileAtomic(filepath.Join(d.layout.CacheDir, fileAccelCache), data, 0o600)
	}
	d.mu.Lock()
	d.accel = choice
	d.mu.Unlock()
	return choice
}

// Preflight check sets.
const (
	checksForCreate = iota
	checksForBuild
	checksForAgentBuild
	checksForDerive
)

// preflight runs the doctor checks an action needs and fails with their
// fixes, before anything is created.
func (d *Daemon) preflight(ctx context.Context, which int) error {
	checks := append(doctor.QEMU(ctx, d.runner), doctor.Mkfs(ctx, d.runner))
	if which == checksForAgentBuild {
		checks = append(checks, doctor.AgentTools(ctx, d.runner)...)
	}
	if which == checksForBuild || which == checksForAgentBuild {
		checks = append(checks, doctor.ImageTools(ctx, d.runner)...)
		checks = append(checks, doctor.FreeDisk(d.layout.DataDir, 4<<30))
	} else if which == checksForDerive {
		checks = append(checks, doctor.FreeDisk(d.layout.DataDir, 4<<30))
	} else {
		checks = append(checks, doctor.FreeDisk(d.layout.DataDir, 256<<20))
	}
	return doctor.Error(checks)
}

// Doctor runs every host-side check the daemon can answer for.
func (d *Daemon) Doctor(ctx context.Context) []doctor.Check {
	checks := doctor.QEMU(ctx, d.runner)
	checks = append(checks, doctor.Mkfs(ctx, d.runner))
	checks = append(checks, doctor.ImageTools(ctx, d.runner)...)
	checks = append(checks, doctor.AgentTools(ctx, d.runner)...)
	acc := d.currentAccel()
	// Doctor answers with the real probe: run it now when an image kernel
	// is there to boot and no probe ran during this host boot.
	if img, err := d.store.DefaultImage(ctx); err == nil {
		acc = d.accelFor(ctx, img)
	}
	checks = append(checks, doctor.KVM(acc.Accel == "kvm", acc.Note), doctor.Root(), doctor.FreeDisk(d.layout.DataDir, 4<<30))
	// A VMM's own checks (Firecracker's binary) are optional, since the
	// fallback VMM runs VMs without it, unless the config makes it the
	// default; its jailer is checked when the config jails every VM.
	for _, drv := range d.driverList() {
		need := vmm.Need{Required: d.cfg.VM.VMM == drv.Name(), Jailer: drv.UsesJailer(false, vmm.Process{})}
		checks = append(checks, drv.HostChecks(ctx, d.runner, need)...)
	}
	checks = append(checks, d.defaultVMMCheck(ctx, acc.Accel == "kvm"))
	return checks
}

// probeKVM asks the first driver that has a KVM probe (QEMU's boots the
// image's kernel).
func (d *Daemon) probeKVM(ctx context.Context, img store.Image) (bool, string) {
	for _, drv := range d.driverList() {
		ok, why, err := drv.ProbeKVM(ctx, bootImage(img))
		if errors.Is(err, vmm.ErrNotSupported) {
			continue
		}
		if err != nil {
			return false, err.Error()
		}
		return ok, why
	}
	return false, "no VMM driver here can probe KVM"
}

func (d *Daemon) currentAccel() accelChoice {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.accel
}
