package daemon

import (
	"context"
	"os"
	"time"

	"github.com/bangerdev/banger/internal/api"
)

// reconcile re-adopts the VMs a previous daemon left running. SQLite says
// what should exist; /proc (PID plus start time), QMP and the agent say
// what does. The VMM's control socket is QMP or Firecracker's API,
// whichever driver the VM was created with. Only this instance's records are touched, so another banger
// instance's VMs are never affected.
func (d *Daemon) reconcile(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		log := d.log.With("vm", vm.Name, "id", vm.ID)
		alive := d.driverFor(vm).Alive(d.proc(vm))
		switch {
		case vm.State == api.VMCreating:
			// The create operation died with the previous daemon: unwind
			// it fully, as a failed create would have.
			if alive {
				_ = d.driverFor(vm).Stop(ctx, vm.Dir, d.proc(vm), true, 0)
			}
			if err := d.removeVMMLeftovers(ctx, vm); err != nil {
				log.Warn("leftovers of interrupted create", "err", err)
			}
			os.RemoveAll(vm.Dir)
			if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
				return err
			}
			log.Warn("removed VM whose create was interrupted by a daemon restart")
		case alive:
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := d.vmmStatus(sctx, vm)
			cancel()
			if err != nil {
				log.Warn("adopted VMM does not answer on its control socket", "vmm", vm.VMM, "err", err)
			} else {
				log.Info("re-adopted running VM", "pid", vm.PID, "vmm", vm.VMM, "vmm_status", st)
			}
			if vm.State != api.VMRunning {
				if err := d.store.SetVMState(ctx, vm.ID, api.VMRunning, ""); err != nil {
					return err
				}
			}
			vm.State = api.VMRunning
			// The previous daemon's console pump died with it.
			d.keepConsole(d.ops.base, vm)
			// Reconnect the agent in the background; exec redials anyway.
			go func() {
				actx, cancel := context.WithTimeout(d.ops.base, 30*time.Second)
				defer cancel()
				if _, err := d.agent(actx, vm); err != nil {
					log.Warn("agent of adopted VM not answering", "err", err)
					return
				}
				log.Info("agent reconnected")
			}()
		default:
			if vm.State != api.VMStopped {
				if err := d.store.SetVMState(ctx, vm.ID, api.VMStopped, vm.LastError); err != nil {
					return err
				}
				vm.PID, vm.PIDStartTime = 0, 0
				log.Info("VM's VMM is gone; marked stopped")
			}
		}
	}
	return nil
}
