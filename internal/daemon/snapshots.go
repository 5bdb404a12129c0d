package daemon

// The snapshot engine: `vm snapshot`, `vm fork`, `vm park` and the
// restores behind `vm create --snapshot`, ready images and waking a
// parked VM.
//
// A snapshot is taken one way only (vmm.Snapshotter): the driver pauses
// the guest, saves its memory and devices into the snapshot directory and
// ends the VMM. The VM's disks are then exactly that instant, and become
// the snapshot's read-only layers (snaplayers.go); the VM gets fresh
// copy-on-write overlays on them. A VM that goes on running is restored
// from its own snapshot at once (snaprestore.go). Every VM restored from
// a snapshot gets its own identity from the guest agent before it is
// reported ready.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// dirSnapshots holds one directory per snapshot, under the data dir.
const dirSnapshots = "snapshots"

// Files of a snapshot directory besides the layers (snaplayers.go).
const (
	// snapDirVMM holds what the driver's Save wrote.
	snapDirVMM = "vmm"
)

func (d *Daemon) snapshotsDir() string { return filepath.Join(d.dataDir(), dirSnapshots) }

// snapshotter is the VM's driver as a Snapshotter, or a clear error.
func (d *Daemon) snapshotter(vm store.VM) (vmm.Snapshotter, error) {
	drv := d.driverFor(vm)
	s, ok := drv.(vmm.Snapshotter)
	if !ok {
		return nil, api.Errorf(api.CodeInvalid, "snapshots need the qemu or firecracker VMM", "%s cannot snapshot VMs", drv.Info().Title)
	}
	return s, nil
}

func (d *Daemon) getSnapshot(ctx context.Context, name string) (store.Snapshot, error) {
	s, err := d.store.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && s.State != store.SnapshotReady) {
		return s, api.Errorf(api.CodeNotFound, "see `banger vm snapshot list`", "no snapshot named %q", name)
	}
	return s, err
}

// canSnapshot refuses what Save cannot take: a VM that is not running,
// or one on a TAP (its restore would need a new address and MAC,
// which the guest cannot be given live yet).
func (d *Daemon) canSnapshot(vm store.VM, what string) error {
	if vm.State == api.VMParked {
		return api.Errorf(api.CodeConflict, fmt.Sprintf("wake it first with `banger vm start %s`", vm.Name), "VM %q is parked", vm.Name)
	}
	if vm.State != api.VMRunning || !d.driverFor(vm).Alive(d.proc(vm)) {
		return api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name), "VM %q is %s; only a running VM can be %s", vm.Name, vm.State, what)
	}
	if isTap(vm) {
		return api.Errorf(api.CodeInvalid, "use a VM with --net user", "VM %q is on a TAP device: snapshots, forks and park need user networking for now", vm.Name)
	}
	return nil
}

// defaultSnapshotName is "<vm>-s<N>" with the first N free, cut to fit
// a name's 31 characters.
func (d *Daemon) defaultSnapshotName(ctx context.Context, vm string) string {
	base := vm
	if len(base) > 24 {
		base = base[:24]
	}
	for n := 1; n < 1000; n++ {
		name := fmt.Sprintf("%s-s%d", base, n)
		if _, err := d.store.GetSnapshot(ctx, name); errors.Is(err, store.ErrNotFound) {
			return name
		}
	}
	return "s" + newID(4)
}

// SnapshotVM saves a running VM as a snapshot, as an operation.
func (d *Daemon) SnapshotVM(ctx context.Context, name string, req api.SnapshotVMRequest) (string, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return "", err
	}
	if err := d.canSnapshot(vm, "snapshotted"); err != nil {
		return "", err
	}
	if _, err := d.snapshotter(vm); err != nil {
		return "", err
	}
	if req.Name == "" {
		req.Name = d.defaultSnapshotName(ctx, vm.Name)
	}
	if err := d.checkSnapshotName(ctx, req.Name); err != nil {
		return "", err
	}
	return d.ops.start(ctx, "vm.snapshot", vm.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		unlock := d.lockVM(vm.Name)
		defer unlock()
		snap, err := d.takeSnapshot(ctx, stage, vm.Name, req.Name, api.SnapshotUser, !req.Stop)
		if err != nil {
			return nil, err
		}
		return d.snapshotView(ctx, snap), nil
	})
}

func (d *Daemon) checkSnapshotName(ctx context.Context, name string) error {
	if err := api.ValidateName("snapshot", name); err != nil {
		return err
	}
	if _, err := d.store.GetSnapshot(ctx, name); err == nil {
		return api.Errorf(api.CodeConflict, "pick another name, or delete the old one with `banger vm snapshot delete "+name+"`", "a snapshot named %q already exists", name)
	}
	return nil
}

// takeSnapshot saves the VM name (locked by the caller) as snapshot
// snapName: save, layers, and (resume) the VM restored from it.
func (d *Daemon) takeSnapshot(ctx context.Context, stage stageFunc, name, snapName, kind string, resume bool) (snap store.Snapshot, err error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return snap, err
	}
	if err := d.canSnapshot(vm, "snapshotted"); err != nil {
		return snap, err
	}
	sn, err := d.snapshotter(vm)
	if err != nil {
		return snap, err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return snap, fmt.Errorf("image of %s: %w", vm.Name, err)
	}
	if err := d.checkFree("snapshot", d.dataDir(), uint64(vm.MemoryMiB)<<20+diskMetaMargin); err != nil {
		return snap, err
	}
	compat, err := sn.SnapshotCompat(ctx, vm.Accel)
	if err != nil {
		return snap, fmt.Errorf("snapshot compatibility: %w", err)
	}
	id := newID(4)
	snap = store.Snapshot{
		ID: id, Name: snapName, Kind: kind, State: store.SnapshotSaving,
		VMID: vm.ID, VMName: vm.Name, ImageID: vm.ImageID, ParentID: vm.SnapshotID,
		VMM: vm.VMM, Compat: compat, Accel: vm.Accel, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		WorkDiskBytes: vm.WorkDiskBytes, NetMode: vm.NetMode,
		Dir: filepath.Join(d.snapshotsDir(), id), CreatedAt: time.Now().UTC(),
	}
	if err := os.MkdirAll(filepath.Join(snap.Dir, snapDirVMM), 0o700); err != nil {
		return snap, fmt.Errorf("create snapshot dir: %w", err)
	}
	if err := d.store.CreateSnapshot(ctx, &snap); err != nil {
		os.RemoveAll(snap.Dir)
		if errors.Is(err, store.ErrExists) {
			return snap, api.Errorf(api.CodeConflict, "pick another name", "a snapshot named %q already exists", snapName)
		}
		return snap, fmt.Errorf("record snapshot: %w", err)
	}
	// Until the layers move, a failure removes the snapshot and nothing
	// else: the VM's disks are still its own.
	dropSnap := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		os.RemoveAll(snap.Dir)
		_ = d.store.DeleteSnapshot(dctx, snap.ID)
	}
	var saved vmm.Saved
	err = stage("save", func(ctx context.Context) error {
		d.egress.unsupervise(vm.ID)
		d.dropAgent(vm.ID)
		saved, err = sn.Save(ctx, vm.Dir, d.proc(vm), filepath.Join(snap.Dir, snapDirVMM))
		// Whatever happened, the VMM is gone now.
		vm.State, vm.PID, vm.PIDStartTime = api.VMStopped, 0, 0
		if uerr := d.store.UpdateVM(context.WithoutCancel(ctx), &vm); uerr != nil && err == nil {
			err = uerr
		}
		return err
	})
	if err != nil {
		dropSnap()
		return snap, &opError{err: fmt.Errorf("save %s: %w", vm.Name, err), hint: fmt.Sprintf("the VM is stopped; `banger vm start %s` boots it", vm.Name)}
	}
	if saved.RAMInState {
		// A VM that shares a snapshot's pages saves its RAM in the
		// stream; restores of that would each load all of it. Loaded
		// once, paused, and saved again, it has a memory file that
		// children map and share. Failing that, the stream still works.
		_ = stage("convert", func(ctx context.Context) error {
			conv, err := d.convertSaved(ctx, vm, img, filepath.Join(snap.Dir, snapDirVMM))
			if err != nil {
				d.log.Warn("snapshot kept with its memory in the state stream", "snapshot", snapName, "err", err)
				return err
			}
			saved = conv
			return nil
		})
	}
	// The VMM is gone, and the disks' headers are what qemu-img (the
	// daemon's user) follows when they become layers: a VMM its guest
	// took over may have rewritten them.
	root, work, err := d.vmDisks(ctx, vm, img)
	if err == nil {
		err = checkVMOverlays(root, work)
	}
	if err != nil {
		dropSnap()
		return snap, &opError{err: fmt.Errorf("disks of %s: %w", vm.Name, err), hint: fmt.Sprintf("the VM is stopped; inspect its disks before `banger vm start %s`", vm.Name)}
	}
	err = stage("layers", func(ctx context.Context) error {
		snap.State = store.SnapshotLayering
		if err := d.store.UpdateSnapshot(ctx, &snap); err != nil {
			return err
		}
		return d.layerVM(ctx, &vm, img, &snap)
	})
	if err != nil {
		// A half-moved disk is finished by the VM's next start or by
		// reconcile (rolling forward is safe; rolling back is not once
		// a layer moved).
		return snap, fmt.Errorf("layers of %s: %w", vm.Name, err)
	}
	snap.SizeBytes = treeBytesOf(snap.Dir)
	if saved.Bytes > snap.SizeBytes {
		snap.SizeBytes = saved.Bytes
	}
	snap.State = store.SnapshotReady
	if err := d.store.UpdateSnapshot(ctx, &snap); err != nil {
		return snap, err
	}
	d.log.Info("snapshot saved", "vm", vm.Name, "snapshot", snap.Name, "bytes", snap.SizeBytes, "memory_bytes", saved.MemoryBytes)
	if !resume {
		return snap, nil
	}
	if err := d.restoreInPlace(ctx, stage, &vm, img, filepath.Join(snap.Dir, snapDirVMM), false); err != nil {
		return snap, fmt.Errorf("resume %s from %s: %w", vm.Name, snap.Name, err)
	}
	return snap, nil
}

// ListSnapshots lists the ready snapshots.
func (s snapshotAPI) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	snaps, err := s.d.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Snapshot{}
	for _, sn := range snaps {
		if sn.State == store.SnapshotReady {
			out = append(out, s.d.snapshotView(ctx, sn))
		}
	}
	return out, nil
}

// GetSnapshot is one snapshot's view.
func (s snapshotAPI) GetSnapshot(ctx context.Context, name string) (api.Snapshot, error) {
	sn, err := s.d.getSnapshot(ctx, name)
	if err != nil {
		return api.Snapshot{}, err
	}
	return s.d.snapshotView(ctx, sn), nil
}

func (d *Daemon) snapshotView(ctx context.Context, s store.Snapshot) api.Snapshot {
	v := api.Snapshot{
		ID: s.ID, Name: s.Name, Kind: s.Kind, VM: s.VMName, VMM: s.VMM, CPUs: s.CPUs,
		MemoryBytes: int64(s.MemoryMiB) << 20, WorkDisk: s.WorkDiskBytes, SizeBytes: s.SizeBytes,
		CreatedAt: s.CreatedAt, Compat: s.Compat,
	}
	if img, err := d.store.GetImage(ctx, s.ImageID); err == nil {
		v.Image = img.Name
	}
	if s.ParentID != "" {
		if p, err := d.store.GetSnapshot(ctx, s.ParentID); err == nil {
			v.Parent = p.Name
		}
	}
	v.UsedBy = d.snapshotUsers(ctx, s)
	return v
}

// snapshotUsers names what stands on s: VMs and snapshots.
func (d *Daemon) snapshotUsers(ctx context.Context, s store.Snapshot) []string {
	vms, snaps, err := d.store.SnapshotsStandingOn(ctx, s.ID)
	if err != nil {
		return nil
	}
	var out []string
	for _, vm := range vms {
		out = append(out, vm.Name)
	}
	for _, c := range snaps {
		out = append(out, "snapshot "+c.Name)
	}
	return out
}

// DeleteSnapshot removes a snapshot nothing stands on. force first
// flattens the stopped VMs that stand on it; running VMs and snapshots
// taken on top of it still refuse.
func (s snapshotAPI) DeleteSnapshot(ctx context.Context, name string, force bool) error {
	d := s.d
	snap, err := d.getSnapshot(ctx, name)
	if err != nil {
		return err
	}
	vms, snaps, err := d.store.SnapshotsStandingOn(ctx, snap.ID)
	if err != nil {
		return err
	}
	if len(snaps) > 0 {
		var names []string
		for _, c := range snaps {
			names = append(names, c.Name)
		}
		return api.Errorf(api.CodeConflict, "delete those snapshots first", "snapshots %v were taken on top of %q", names, snap.Name)
	}
	if len(vms) > 0 && !force {
		var names []string
		for _, vm := range vms {
			names = append(names, vm.Name)
		}
		return api.Errorf(api.CodeConflict, "delete them first, or stop them and use --force to copy the snapshot's data into their own disks", "VMs %v stand on snapshot %q", names, snap.Name)
	}
	for _, vm := range vms {
		if err := d.flattenVM(ctx, vm.Name); err != nil {
			return err
		}
	}
	if d.imageReadySnapshot(ctx, snap) {
		if err := d.store.SetImageReadySnapshot(ctx, snap.ImageID, ""); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(snap.Dir); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", snap.Name, err)
	}
	return d.store.DeleteSnapshot(ctx, snap.ID)
}

func (d *Daemon) imageReadySnapshot(ctx context.Context, snap store.Snapshot) bool {
	img, err := d.store.GetImage(ctx, snap.ImageID)
	return err == nil && img.ReadySnapshotID == snap.ID
}

// treeBytesOf is the space a directory tree takes on disk.
func treeBytesOf(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			n += int64(allocatedBytes(p))
		}
		return nil
	})
	return n
}

// snapshotAPI is the snapshot engine as the HTTP layer sees it.
type snapshotAPI struct{ d *Daemon }

// SnapshotVM saves a running VM as a snapshot (an operation).
func (s snapshotAPI) SnapshotVM(ctx context.Context, vm string, req api.SnapshotVMRequest) (string, error) {
	return s.d.SnapshotVM(ctx, vm, req)
}

// ForkVM snapshots a running VM and restores N children from it.
func (s snapshotAPI) ForkVM(ctx context.Context, vm string, req api.ForkVMRequest) (string, error) {
	return s.d.ForkVM(ctx, vm, req)
}

// maxForkCount bounds one fork: every child is a full VM.
const maxForkCount = 16

// ForkVM is a snapshot of a running VM and N VMs restored from it, as
// one operation whose result is an api.ForkResult. The parent runs on;
// the children share the snapshot's memory pages until they write them.
func (d *Daemon) ForkVM(ctx context.Context, name string, req api.ForkVMRequest) (string, error) {
	parent, err := d.getVM(ctx, name)
	if err != nil {
		return "", err
	}
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 1 || req.Count > maxForkCount {
		return "", api.Errorf(api.CodeInvalid, fmt.Sprintf("choose --count between 1 and %d", maxForkCount), "impossible fork count %d", req.Count)
	}
	if req.Prefix == "" {
		req.Prefix = parent.Name
	}
	if err := d.canSnapshot(parent, "forked"); err != nil {
		return "", err
	}
	if _, err := d.snapshotter(parent); err != nil {
		return "", err
	}
	var names []string
	for i := 1; i <= req.Count; i++ {
		n := fmt.Sprintf("%s-%d", req.Prefix, i)
		if err := api.ValidateName("VM", n); err != nil {
			return "", api.Errorf(api.CodeInvalid, "choose a shorter --prefix (lowercase letters, digits, '-')", "fork child name %q is not a valid VM name", n)
		}
		if _, err := d.store.GetVM(ctx, n); err == nil || d.isCreating(n) {
			return "", api.Errorf(api.CodeConflict, "choose another --prefix, or delete the old VM", "a VM named %q already exists", n)
		}
		names = append(names, n)
	}
	snapName := d.defaultSnapshotName(ctx, parent.Name)
	d.mu.Lock()
	for _, n := range names {
		if d.creating[n] {
			d.mu.Unlock()
			return "", api.Errorf(api.CodeConflict, "wait for it, or choose another --prefix", "VM %q is being created right now", n)
		}
	}
	for _, n := range names {
		d.creating[n] = true
	}
	d.mu.Unlock()
	release := func() {
		d.mu.Lock()
		for _, n := range names {
			delete(d.creating, n)
		}
		d.mu.Unlock()
	}
	id, err := d.ops.start(ctx, "vm.fork", parent.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		defer release()
		unlock := d.lockVM(parent.Name)
		snap, err := d.takeSnapshot(ctx, stage, parent.Name, snapName, api.SnapshotUser, true)
		unlock()
		if err != nil {
			return nil, err
		}
		res := api.ForkResult{Snapshot: snap.Name}
		for _, n := range names {
			creq := api.CreateVMRequest{
				Name: n, Snapshot: snap.Name, Egress: parent.Egress, EgressPolicy: parent.EgressPolicy,
				Allow: parent.EgressAllow, Credentials: parent.Credentials,
			}
			s, err := d.snapshotForCreate(ctx, &creq)
			if err != nil {
				return res, err
			}
			img, err := d.validateCreate(ctx, &creq)
			if err != nil {
				return res, fmt.Errorf("child %s: %w", n, err)
			}
			child := func(name string, fn func(ctx context.Context) error) error { return stage(n+": "+name, fn) }
			vm, err := d.createVM(ctx, creq, img, &s, child)
			if err != nil {
				return res, fmt.Errorf("child %s: %w", n, err)
			}
			res.VMs = append(res.VMs, d.vmView(ctx, vm))
		}
		return res, nil
	})
	if err != nil {
		release()
	}
	return id, err
}

// reconcileSnapshots finishes or removes what a daemon killed during a
// snapshot left: a save in progress is dropped (the VM's disks are still
// its own), a move of the disks into layers is finished (after the first
// disk moved, forward is the only safe way), and a snapshot directory
// without a record is removed.
func (d *Daemon) reconcileSnapshots(ctx context.Context) error {
	snaps, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, s := range snaps {
		log := d.log.With("snapshot", s.Name, "id", s.ID)
		switch s.State {
		case store.SnapshotSaving:
			os.RemoveAll(s.Dir)
			if err := d.store.DeleteSnapshot(ctx, s.ID); err != nil {
				return err
			}
			log.Warn("removed snapshot whose save was interrupted by a daemon restart")
			continue
		case store.SnapshotLayering:
			if d.layeringOrphan(ctx, s) {
				// Its VM was deleted after the failed snapshot: the
				// layers can never be finished, and nothing stands on
				// them. Kept, it would hold its disk space forever,
				// listed nowhere and undeletable.
				os.RemoveAll(s.Dir)
				if err := d.store.DeleteSnapshot(ctx, s.ID); err != nil {
					return err
				}
				log.Warn("removed unfinished snapshot whose VM is gone")
				continue
			}
			if err := d.finishLayering(ctx, &s); err != nil {
				log.Error("could not finish the layers of an interrupted snapshot", "err", err)
			} else {
				log.Warn("finished the layers of a snapshot interrupted by a daemon restart")
			}
		}
		known[s.ID] = true
	}
	entries, err := os.ReadDir(d.snapshotsDir())
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if !known[e.Name()] {
			os.RemoveAll(filepath.Join(d.snapshotsDir(), e.Name()))
			d.log.Warn("removed snapshot directory without a record", "dir", e.Name())
		}
	}
	return nil
}

// finishVMLayering finishes the layers of a snapshot of vm (locked by
// the caller) whose layers stage failed: until then the VM's disks are
// half moved and it cannot boot.
func (d *Daemon) finishVMLayering(ctx context.Context, vm *store.VM) error {
	snaps, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		if s.VMID != vm.ID || s.State != store.SnapshotLayering {
			continue
		}
		if err := d.finishLayering(ctx, &s); err != nil {
			return fmt.Errorf("finish the layers of snapshot %s: %w", s.Name, err)
		}
		d.log.Warn("finished the layers of an unfinished snapshot", "vm", vm.Name, "snapshot", s.Name)
		got, err := d.store.GetVM(ctx, vm.ID)
		if err != nil {
			return err
		}
		*vm = got
	}
	return nil
}

// layeringOrphan says whether an unfinished snapshot's VM is gone and
// nothing stands on the snapshot.
func (d *Daemon) layeringOrphan(ctx context.Context, s store.Snapshot) bool {
	if _, err := d.store.GetVM(ctx, s.VMID); !errors.Is(err, store.ErrNotFound) {
		return false
	}
	vms, snaps, err := d.store.SnapshotsStandingOn(ctx, s.ID)
	return err == nil && len(vms) == 0 && len(snaps) == 0
}

func (d *Daemon) finishLayering(ctx context.Context, s *store.Snapshot) error {
	vm, err := d.store.GetVM(ctx, s.VMID)
	if err != nil {
		return err
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return err
	}
	if err := d.layerVM(ctx, &vm, img, s); err != nil {
		return err
	}
	s.SizeBytes = treeBytesOf(s.Dir)
	s.State = store.SnapshotReady
	return d.store.UpdateSnapshot(ctx, s)
}
