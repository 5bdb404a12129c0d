package daemon

// Park and wake: a parked VM's memory and devices are saved in its own
// directory and its VMM is gone, so it costs disk and nothing else; any
// use of it (exec, ssh, sessions, workspace, `vm start`) restores it
// first (useVM). Its disks stay its own: park makes no layers.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

// dirPark holds a parked VM's saved state, inside its VM directory.
const dirPark = "park"

func parkDir(vm store.VM) string { return filepath.Join(vm.Dir, dirPark) }

// ParkVM saves a running VM into its directory and ends its VMM.
func (s snapshotAPI) ParkVM(ctx context.Context, name string) (api.VM, error) {
	vm, err := s.d.ParkVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	return s.d.vmView(ctx, vm), nil
}

// ParkVM saves a running VM into its directory and ends its VMM.
func (d *Daemon) ParkVM(ctx context.Context, name string) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	unlock := d.lockVM(vm.Name)
	defer unlock()
	return d.parkLocked(ctx, name)
}

func (d *Daemon) parkLocked(ctx context.Context, name string) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	if vm.State == api.VMParked {
		return vm, nil
	}
	if err := d.canSnapshot(vm, "parked"); err != nil {
		return vm, err
	}
	sn, err := d.snapshotter(vm)
	if err != nil {
		return vm, err
	}
	if err := d.checkFree("park", vm.Dir, uint64(vm.MemoryMiB)<<20); err != nil {
		return vm, err
	}
	dir := parkDir(vm)
	if err := os.RemoveAll(dir); err != nil {
		return vm, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return vm, fmt.Errorf("create park dir: %w", err)
	}
	d.egress.unsupervise(vm.ID)
	d.dropAgent(vm.ID)
	t0 := time.Now()
	saved, err := sn.Save(ctx, vm.Dir, d.proc(vm), dir)
	vm.PID, vm.PIDStartTime = 0, 0
	if err != nil {
		os.RemoveAll(dir)
		vm.State, vm.LastError = api.VMStopped, err.Error()
		_ = d.store.UpdateVM(context.WithoutCancel(ctx), &vm)
		return vm, &opError{err: fmt.Errorf("park %s: %w", vm.Name, err), hint: fmt.Sprintf("the VM is stopped; `banger vm start %s` boots it", vm.Name)}
	}
	vm.State, vm.LastError = api.VMParked, ""
	if err := d.store.UpdateVM(ctx, &vm); err != nil {
		return vm, err
	}
	d.log.Info("VM parked", "vm", vm.Name, "bytes", saved.Bytes, "memory_bytes", saved.MemoryBytes, "took", time.Since(t0).Round(time.Millisecond))
	return vm, nil
}

// wakeLocked restores a parked VM (locked by the caller) from its saved
// state. A failed wake leaves it stopped with the error; its saved
// state is kept until the next start boots it cold.
func (d *Daemon) wakeLocked(ctx context.Context, vm *store.VM, img store.Image) error {
	noStages := func(name string, fn func(ctx context.Context) error) error { return fn(ctx) }
	t0 := time.Now()
	if err := d.restoreInPlace(ctx, noStages, vm, img, parkDir(*vm), false); err != nil {
		os.RemoveAll(parkDir(*vm))
		return fmt.Errorf("wake %s: %w (its memory is lost; `banger vm start %s` boots it from its disks)", vm.Name, err, vm.Name)
	}
	if err := os.RemoveAll(parkDir(*vm)); err != nil {
		d.log.Warn("remove parked state", "vm", vm.Name, "err", err)
	}
	d.log.Info("VM woken", "vm", vm.Name, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
