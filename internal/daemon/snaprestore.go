package daemon

// Restores: a VMM started from a snapshot instead of a kernel, its agent,
// and the guest's new identity. Three callers: a new VM from a snapshot
// (`vm create --snapshot`, fork children, ready images), a VM that runs
// on after its own snapshot, and a parked VM waking.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// restoreSteps start a VM from a snapshot: the VMM, its agent, the
// guest's identity. The identity step records the VM running.
func (d *Daemon) restoreSteps() []step {
	return []step{
		{name: "restore", fn: d.bootVMM},
		{name: "agent", fn: d.withConsoleTail(d.connectAgent)},
		{name: "identity", fn: d.restoreIdentity},
	}
}

// restoreCreateSteps make a VM from a snapshot.
func (d *Daemon) restoreCreateSteps() []step {
	steps := []step{
		{name: "prepare", fn: d.createPrepare},
		{name: "layers", fn: d.createLayers},
	}
	steps = append(steps, d.restoreSteps()...)
	return append(steps, step{name: "services", skip: noServiceWait, fn: d.withConsoleTail(d.createServices)})
}

func (d *Daemon) createLayers(ctx context.Context, r *vmRun) error {
	return d.restoreLayers(ctx, *r.vm, r.img, *r.snap)
}

// restoreIdentity makes a restored guest its own machine: a new VM gets
// its name, host key, machine id and credentials; every restore gets the
// host's clock and fresh entropy, and drops connections whose peers are
// gone.
func (d *Daemon) restoreIdentity(ctx context.Context, r *vmRun) error {
	vm := r.vm
	c := d.cachedAgent(vm.ID)
	if c == nil {
		return fmt.Errorf("agent of %s went away after the restore", vm.Name)
	}
	req := agentapi.IdentityRequest{UnixNano: time.Now().UnixNano(), Entropy: make([]byte, 64), ResetConnections: true}
	if _, err := rand.Read(req.Entropy); err != nil {
		return err
	}
	if r.newIdentity {
		key, err := os.ReadFile(filepath.Join(vm.Dir, fileHostKey))
		if err != nil {
			return fmt.Errorf("read host key: %w", err)
		}
		req.Hostname = vm.Name
		req.SSHHostKeys = map[string]string{"ed25519": string(key)}
		req.MachineID = newID(16)
		if r.persist {
			creds, err := d.authSeed(d.broker, vm, vm.Credentials, d.cfg.Credentials.Env)
			if err != nil {
				return err
			}
			req.AuthFiles = creds.Files
			if req.AuthFiles == nil {
				req.AuthFiles = []agentapi.SeedFile{}
			}
			vm.AuthSyncedJSON = encodeNames(creds.Synced)
		}
	}
	ictx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rep, err := c.Identity(ictx, req)
	if err != nil {
		return fmt.Errorf("give %s its identity: %w", vm.Name, err)
	}
	fmt.Fprintln(stageOutput(ctx), guestSummary(rep.Done))
	if !r.persist {
		return nil
	}
	return d.markRunning(ctx, r)
}

// maxGuestSummary caps guestSummary: the agent's own lines are short.
const maxGuestSummary = 1024

// guestSummary is what a guest's agent reported, fit for a terminal: it
// comes from the guest, so control characters (escape sequences, line
// breaks that fake other output) become '?', and it is cut short.
func guestSummary(lines []string) string {
	s := strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, strings.Join(lines, "; "))
	if len(s) > maxGuestSummary {
		s = strings.ToValidUTF8(s[:maxGuestSummary], "") + " ..."
	}
	return s
}

// restoreInPlace restores an existing VM (locked by the caller) from
// the saved state in stateDir: after its own snapshot, or waking from
// park. It keeps its identity. On failure the VM is left stopped.
func (d *Daemon) restoreInPlace(ctx context.Context, stage stageFunc, vm *store.VM, img store.Image, stateDir string, share bool) error {
	var undo cleanup
	r := &vmRun{vm: vm, img: img, undo: &undo, persist: true, restore: &vmm.Restore{Dir: stateDir, Share: share}}
	if err := d.checkRestorable(ctx, *vm, stateDir); err != nil {
		return err
	}
	if err := d.runSteps(ctx, stage, r, d.restoreSteps()); err != nil {
		if r.proc.PID != 0 {
			// What the VMM says of a restore that failed is the first
			// thing to look at.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			st, serr := d.driverFor(*vm).Status(sctx, vm.Dir, r.proc)
			cancel()
			d.log.Warn("restore failed", "vm", vm.Name, "from", stateDir, "vmm_status", st, "status_err", serr, "err", err)
		}
		undo.run()
		vm.State, vm.PID, vm.PIDStartTime, vm.LastError = api.VMStopped, 0, 0, err.Error()
		_ = d.store.UpdateVM(context.WithoutCancel(ctx), vm)
		return err
	}
	return nil
}

// checkRestorable refuses saved state the VM's driver did not write or
// that was cut short, before any VMM starts.
func (d *Daemon) checkRestorable(ctx context.Context, vm store.VM, stateDir string) error {
	sn, err := d.snapshotter(vm)
	if err != nil {
		return err
	}
	if err := sn.CheckSnapshot(stateDir); err != nil {
		return api.Errorf(api.CodeUnavailable, "delete it and take a new one", "saved state in %s is unusable: %v", stateDir, err)
	}
	return nil
}

// snapshotForCreate checks a create from snapshot (or an image's ready
// snapshot) and fills req from it. Nothing exists yet.
func (d *Daemon) snapshotForCreate(ctx context.Context, req *api.CreateVMRequest) (store.Snapshot, error) {
	snap, err := d.getSnapshot(ctx, req.Snapshot)
	if err != nil {
		return snap, err
	}
	img, err := d.store.GetImage(ctx, snap.ImageID)
	if err != nil {
		return snap, api.Errorf(api.CodeUnavailable, "delete the snapshot", "image of snapshot %q is gone: %v", snap.Name, err)
	}
	if req.Image != "" && req.Image != img.Name && req.Image != img.ID {
		return snap, api.Errorf(api.CodeInvalid, "leave out --image: a snapshot brings its own", "snapshot %q is of image %s, not %s", snap.Name, img.Name, req.Image)
	}
	req.Image = img.Name
	for _, f := range []struct {
		flag      string
		got, want int
	}{
		{"--cpus", req.CPUs, snap.CPUs},
		{"--memory", req.MemoryMiB, snap.MemoryMiB},
		{"--disk", req.DiskGiB, int(snap.WorkDiskBytes >> 30)},
	} {
		if f.got != 0 && f.got != f.want {
			return snap, api.Errorf(api.CodeInvalid, fmt.Sprintf("leave out %s (the snapshot's is %d) or create without --snapshot", f.flag, f.want), "snapshot %q was taken with %s %d", snap.Name, f.flag, f.want)
		}
	}
	req.CPUs, req.MemoryMiB, req.DiskGiB = snap.CPUs, snap.MemoryMiB, int(snap.WorkDiskBytes>>30)
	if req.VMM != "" && req.VMM != snap.VMM {
		return snap, api.Errorf(api.CodeInvalid, "leave out --vmm", "snapshot %q is a %s snapshot", snap.Name, snap.VMM)
	}
	req.VMM = snap.VMM
	if req.Net != "" && req.Net != "user" {
		return snap, api.Errorf(api.CodeInvalid, "use --net user", "VMs restored from snapshots use user networking for now")
	}
	req.Net = "user"
	drv, ok := d.drivers[snap.VMM]
	if !ok {
		return snap, api.Errorf(api.CodeUnavailable, "", "snapshot %q needs VMM %s, which this daemon does not have", snap.Name, snap.VMM)
	}
	sn, ok := drv.(vmm.Snapshotter)
	if !ok {
		return snap, api.Errorf(api.CodeUnavailable, "", "%s cannot restore snapshots", snap.VMM)
	}
	compat, err := sn.SnapshotCompat(ctx, snap.Accel)
	if err != nil {
		return snap, err
	}
	if compat != snap.Compat {
		return snap, api.Errorf(api.CodeUnavailable, "take a new snapshot on this host, or create the VM without --snapshot",
			"snapshot %q was saved by %q; this host has %q", snap.Name, snap.Compat, compat)
	}
	if err := sn.CheckSnapshot(filepath.Join(snap.Dir, snapDirVMM)); err != nil {
		return snap, api.Errorf(api.CodeUnavailable, fmt.Sprintf("delete it (`banger vm snapshot delete %s`) and take a new one", snap.Name), "snapshot %q is unusable: %v", snap.Name, err)
	}
	return snap, nil
}

// useVM is getVM for a use of the VM (exec, ssh, sessions, workspace):
// a parked VM is woken first.
func (d *Daemon) useVM(ctx context.Context, name string) (store.VM, error) {
	vm, err := d.getVM(ctx, name)
	if err == nil {
		d.act.touch(vm.ID)
	}
	if err != nil || vm.State != api.VMParked {
		return vm, err
	}
	return d.StartVM(context.WithoutCancel(ctx), name, api.StartVMRequest{})
}

// convertSaved turns a save whose RAM is in the state stream (dir) into
// one with a memory file: a VMM of the stopped VM (whose disks are still
// the saved instant) loads it and stays paused, and is saved again at
// once, so nothing runs and no disk changes in between.
func (d *Daemon) convertSaved(ctx context.Context, vm store.VM, img store.Image, dir string) (vmm.Saved, error) {
	sn, err := d.snapshotter(vm)
	if err != nil {
		return vmm.Saved{}, err
	}
	var undo cleanup
	defer undo.run()
	spec, err := d.vmSpec(ctx, &vm, img)
	if err != nil {
		return vmm.Saved{}, err
	}
	spec.Restore = &vmm.Restore{Dir: dir, Paused: true}
	if err := d.runAs(ctx, &vm, &spec, true, &undo); err != nil {
		return vmm.Saved{}, err
	}
	drv := d.driverFor(vm)
	p, err := drv.Start(ctx, spec)
	if err != nil {
		return vmm.Saved{}, fmt.Errorf("load the saved state: %w", err)
	}
	undo.push(func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		_ = drv.Stop(sctx, vm.Dir, p, true, 0)
	})
	tmp := dir + ".conv"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return vmm.Saved{}, err
	}
	saved, err := sn.Save(ctx, vm.Dir, p, tmp)
	if err == nil && saved.RAMInState {
		err = errors.New("the VMM saved its RAM in the stream again")
	}
	if err != nil {
		os.RemoveAll(tmp)
		return vmm.Saved{}, fmt.Errorf("save again: %w", err)
	}
	old := dir + ".old"
	if err := os.Rename(dir, old); err != nil {
		os.RemoveAll(tmp)
		return vmm.Saved{}, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.Rename(old, dir)
		return vmm.Saved{}, err
	}
	os.RemoveAll(old)
	return saved, nil
}
