package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// stopTimeout is how long a polite stop waits for the guest to power off
// before the VMM is killed.
const stopTimeout = 30 * time.Second

func (d *Daemon) getVM(ctx context.Context, name string) (store.VM, error) {
	vm, err := d.store.GetVM(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return vm, api.Errorf(api.CodeNotFound, "see `banger vm list`", "no VM named %q", name)
	}
	return vm, err
}

func (d *Daemon) proc(vm store.VM) vmm.Process {
	return vmm.Process{PID: vm.PID, StartTime: vm.PIDStartTime, State: vm.VMMStateJSON}
}

// StartVM boots a stopped VM with the disks it already has, growing its
// work disk first when req asks for a larger one.
func (d *Daemon) StartVM(ctx context.Context, name string, req api.StartVMRequest) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	unlock := d.lockVM(vm.Name)
	defer unlock()
	if vm, err = d.getVM(ctx, name); err != nil {
		return vm, err
	}
	if req.DiskGiB < 0 || req.DiskGiB > 2048 {
		return vm, api.Errorf(api.CodeInvalid, "choose --disk between 1 and 2048 GiB", "impossible work disk size %d GiB", req.DiskGiB)
	}
	wantDisk := int64(req.DiskGiB) << 30
	if vm.State == api.VMRunning && d.driverFor(vm).Alive(d.proc(vm)) {
		if wantDisk != 0 && wantDisk != vm.WorkDiskBytes {
			return vm, api.Errorf(api.CodeConflict, fmt.Sprintf("stop it first (`banger vm stop %s`), then `banger vm start %s --disk %d`", vm.Name, vm.Name, req.DiskGiB),
				"VM %q is running; its work disk is resized while it is stopped", vm.Name)
		}
		return vm, nil
	}
	if vm.State == api.VMCreating {
		return vm, api.Errorf(api.CodeConflict, "wait for the create operation to finish", "VM %q is still being created", vm.Name)
	}
	if err := d.finishVMLayering(ctx, &vm); err != nil {
		return vm, err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, fmt.Errorf("image of %s: %w", vm.Name, err)
	}
	if vm.State == api.VMParked {
		if wantDisk != 0 && wantDisk != vm.WorkDiskBytes {
			return vm, api.Errorf(api.CodeConflict, fmt.Sprintf("wake it first (`banger vm start %s`), stop it, then start it with --disk", vm.Name), "VM %q is parked", vm.Name)
		}
		return vm, d.wakeLocked(ctx, &vm, img)
	}
	if wantDisk != 0 && vm.SnapshotID != "" {
		return vm, api.Errorf(api.CodeInvalid, "its work disk is an overlay on a snapshot; flatten it with `banger vm snapshot delete SNAP --force` first", "VM %q stands on a snapshot", vm.Name)
	}
	if err := d.preflight(ctx, checksForCreate); err != nil {
		return vm, err
	}
	if err := d.vmmPreflight(ctx, d.driverFor(vm), vm.NetMode, false, d.proc(vm)); err != nil {
		return vm, err
	}
	if wantDisk != 0 {
		if err := d.growWorkDisk(ctx, &vm, wantDisk); err != nil {
			return vm, err
		}
		if err := d.store.UpdateVM(ctx, &vm); err != nil {
			return vm, err
		}
	}
	if isTap(vm) {
		// Restores the TAP after a host reboot; a no-op otherwise.
		if err := d.netEngine().attachNet(ctx, vm, nil); err != nil {
			return vm, err
		}
	}
	var undo cleanup
	noStages := func(name string, fn func(ctx context.Context) error) error { return fn(ctx) }
	// The boot's last step records the VM running.
	_, err = d.boot(ctx, &vm, img, noStages, &undo, true, false)
	if err != nil {
		undo.run()
		_ = d.store.SetVMState(ctx, vm.ID, api.VMStopped, err.Error())
		var oe *opError
		if errors.As(err, &oe) && oe.consoleTail != "" {
			return vm, api.Errorf(api.CodeUnavailable, "console tail:\n"+oe.consoleTail, "start %s: %v", vm.Name, err)
		}
		return vm, fmt.Errorf("start %s: %w", vm.Name, err)
	}
	return vm, nil
}

// StopVM powers a VM off: the agent asks systemd for a clean poweroff, the
// VMM gets an ACPI power button press, and whatever is still alive after
// stopTimeout is killed. force kills at once.
func (d *Daemon) StopVM(ctx context.Context, name string, force bool) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	unlock := d.lockVM(vm.Name)
	defer unlock()
	return d.stopLocked(ctx, name, force)
}

func (d *Daemon) stopLocked(ctx context.Context, name string, force bool) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	if vm.State == api.VMStopped && !d.driverFor(vm).Alive(d.proc(vm)) {
		return vm, nil
	}
	if vm.State == api.VMParked && !d.driverFor(vm).Alive(d.proc(vm)) {
		// Stopping a parked VM forgets its saved memory: its next
		// start boots from its disks.
		if err := os.RemoveAll(parkDir(vm)); err != nil {
			return vm, fmt.Errorf("remove parked state of %s: %w", vm.Name, err)
		}
		vm.State, vm.LastError = api.VMStopped, ""
		return vm, d.store.UpdateVM(ctx, &vm)
	}
	if err := d.store.SetVMState(ctx, vm.ID, api.VMStopping, ""); err != nil {
		return vm, err
	}
	if !force && d.driverFor(vm).Alive(d.proc(vm)) {
		d.politePoweroff(ctx, vm)
	}
	d.egress.unsupervise(vm.ID)
	d.dropAgent(vm.ID)
	if err := d.driverFor(vm).Stop(ctx, vm.Dir, d.proc(vm), force, stopTimeout); err != nil {
		_ = d.store.SetVMState(ctx, vm.ID, api.VMError, err.Error())
		return vm, fmt.Errorf("stop %s: %w", vm.Name, err)
	}
	vm.State, vm.PID, vm.PIDStartTime, vm.LastError = api.VMStopped, 0, 0, ""
	return vm, d.store.UpdateVM(ctx, &vm)
}

// politePoweroff asks the guest to shut down. Debian minbase has no
// logind to act on the ACPI power button, so the agent is the clean way.
func (d *Daemon) politePoweroff(ctx context.Context, vm store.VM) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := d.agent(actx, vm)
	if err != nil {
		d.log.Warn("polite poweroff: agent unreachable", "vm", vm.Name, "err", err)
		return
	}
	// Wait for systemctl to return: closing the stream early would make
	// the agent kill it before it queued the poweroff job.
	if st, err := guestExec(actx, c, api.ExecRequest{Argv: []string{"systemctl", "poweroff", "--no-block"}}, nil, nil); err != nil || st.Code != 0 {
		d.log.Warn("polite poweroff failed", "vm", vm.Name, "err", err, "code", st.Code)
	}
}

// RestartVM stops and starts a VM.
func (d *Daemon) RestartVM(ctx context.Context, name string) (store.VM, error) {
	if _, err := d.StopVM(ctx, name, false); err != nil {
		return store.VM{}, err
	}
	return d.StartVM(ctx, name, api.StartVMRequest{})
}

// DeleteVM stops a VM if needed and removes its disks, ports and record.
func (d *Daemon) DeleteVM(ctx context.Context, name string, force bool) error {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return err
	}
	if d.isCreating(vm.Name) && !force {
		return api.Errorf(api.CodeConflict, "wait for the create to finish, or use --force", "VM %q is being created", vm.Name)
	}
	unlock := d.lockVM(vm.Name)
	defer unlock()
	if _, err := d.stopLocked(ctx, name, force); err != nil {
		return err
	}
	if err := d.removeVMMLeftovers(ctx, vm); err != nil {
		return err
	}
	if err := d.netEngine().detachNet(ctx, vm); err != nil {
		return fmt.Errorf("remove network of %s: %w", vm.Name, err)
	}
	if d.broker != nil {
		d.broker.forget(brokerRef(&vm), vm.Dir)
	}
	if err := os.RemoveAll(vm.Dir); err != nil {
		return fmt.Errorf("remove vm dir: %w", err)
	}
	if err := d.store.ReleaseLease(ctx, vm.ID); err != nil {
		return err
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		return err
	}
	d.forgetVM(vm.ID)
	return nil
}
