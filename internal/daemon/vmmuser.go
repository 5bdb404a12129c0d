package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// runAs fills spec.UID and spec.GID: when the daemon is root, every
// QEMU and every jailed Firecracker runs as a user of its own from
// [vmm] uid_range (gid = uid), allocated once per VM and kept until the
// VM is deleted; a throwaway VM (image verify, derive) gives its uid
// back when its boot is undone. A VMM that a guest takes over then holds
// no privilege and cannot touch another VM's process or files. A user
// daemon runs VMMs as itself, as before. With user networking and
// egress all, the host's local addresses are closed to the VMM users
// first (network.LocalGuard).
func (d *Daemon) runAs(ctx context.Context, vm *store.VM, spec *vmm.Spec, persist bool, undo *cleanup) error {
	r := d.cfg.VMMProcess.UIDs()
	if os.Geteuid() != 0 || r.Empty() {
		return nil
	}
	switch d.driverFor(*vm).Info().OwnUser {
	case vmm.OwnUserNever:
		return nil
	case vmm.OwnUserJailed:
		if !spec.Jailer {
			// An unjailed Firecracker opens /dev/kvm and its TAP by
			// name and stays the daemon's user.
			return nil
		}
	}
	uid, err := d.store.AllocateVMMUser(ctx, vm.ID, r.First, r.Last, uidsInUse())
	if errors.Is(err, store.ErrExhausted) {
		return api.Errorf(api.CodeUnavailable, "delete a VM, or widen [vmm] uid_range", "no free VMM uid left in %s", r)
	}
	if err != nil {
		return fmt.Errorf("allocate vmm user: %w", err)
	}
	if !persist {
		undo.push(func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = d.store.ReleaseVMMUser(rctx, vm.ID)
		})
	}
	spec.UID, spec.GID = int(uid), int(uid)
	if spec.Net.Mode != vmm.NetTap && spec.Egress == config.EgressAll {
		if err := d.netEngine().applyLocalGuard(ctx); err != nil {
			return fmt.Errorf("close the host's local addresses to the VM (egress all): %w", err)
		}
	}
	return nil
}

// startVMMUsers runs at daemon start, after reconcile: the uids of
// throwaway VMs a dead daemon never released go back, and the guard
// matches the VMs that survived.
func (d *Daemon) startVMMUsers(ctx context.Context) {
	if n, err := d.store.PruneVMMUsers(ctx); err != nil {
		d.log.Warn("prune vmm users", "err", err)
	} else if n > 0 {
		d.log.Info("released uids of throwaway VMs of a previous daemon", "count", n)
	}
	d.netEngine().syncLocalGuard(ctx)
}

// uidsInUse reports the uids some process on the host runs as (real,
// effective, saved or filesystem): a uid another banger instance's VMM
// holds, with an overlapping range, is not handed out again.
func uidsInUse() func(uint32) bool {
	used := map[uint32]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
				for _, f := range strings.Fields(rest) {
					if id, err := strconv.ParseUint(f, 10, 32); err == nil {
						used[uint32(id)] = true
					}
				}
				break
			}
		}
	}
	return func(id uint32) bool { return used[id] }
}
