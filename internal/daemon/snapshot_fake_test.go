package daemon

// Snapshots, forks and park on a real daemon with the fake VMM: the
// disks' layering, the records, the restores and identities, and what
// failures and crashes leave behind.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// snapshot takes a snapshot of vm to the operation's end.
func (h *fakeHost) snapshot(d *fakeDaemon, vm, name string, stop bool) api.Operation {
	h.t.Helper()
	id, err := d.SnapshotVM(context.Background(), vm, api.SnapshotVMRequest{Name: name, Stop: stop})
	if err != nil {
		h.t.Fatalf("snapshot %s: %v", vm, err)
	}
	return h.waitOp(d, id)
}

func (h *fakeHost) mustSnapshot(d *fakeDaemon, vm, name string, stop bool) store.Snapshot {
	h.t.Helper()
	op := h.snapshot(d, vm, name, stop)
	if op.State != api.OpSucceeded {
		h.t.Fatalf("snapshot %s: %s (stages %v)", vm, op.Error, stageNames(op))
	}
	s, err := d.store.GetSnapshot(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *fakeHost) vm(d *fakeDaemon, name string) store.VM {
	h.t.Helper()
	vm, err := d.store.GetVM(context.Background(), name)
	if err != nil {
		h.t.Fatalf("vm %s: %v", name, err)
	}
	return vm
}

func TestFakeSnapshotRunsOn(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	one := h.mustCreate(d, "one")
	op := h.snapshot(d, "one", "s1", false)
	if op.State != api.OpSucceeded {
		t.Fatalf("snapshot: %s (%v)", op.Error, stageNames(op))
	}
	want := []string{"save=succeeded", "layers=succeeded", "restore=succeeded", "agent=succeeded", "identity=succeeded"}
	if got := stageNames(op); !slices.Equal(got, want) {
		t.Errorf("stages %v, want %v", got, want)
	}
	s, err := d.store.GetSnapshot(context.Background(), "s1")
	if err != nil || s.State != store.SnapshotReady || s.VMID != one.ID {
		t.Fatalf("snapshot record %+v %v", s, err)
	}
	for _, f := range []string{layerName(diskRoot, s.RootFormat), layerName(diskWork, s.WorkFormat), snapFileSeed, snapFileGuest, filepath.Join(snapDirVMM, "fake-state")} {
		if _, err := os.Stat(filepath.Join(s.Dir, f)); err != nil {
			t.Errorf("snapshot file %s: %v", f, err)
		}
	}
	one = h.vm(d, "one")
	if one.State != api.VMRunning || one.SnapshotID != s.ID || !h.drv.Alive(d.proc(one)) {
		t.Fatalf("VM after its snapshot: %+v", one)
	}
	// Its disks are its own overlays; the layers are the daemon's, read-only.
	for _, f := range []string{paths.FileRootRaw, paths.FileWorkDisk} {
		if _, err := os.Stat(filepath.Join(one.Dir, f)); err != nil {
			t.Errorf("VM disk %s: %v", f, err)
		}
	}
	if st, err := os.Stat(filepath.Join(s.Dir, layerName(diskRoot, s.RootFormat))); err != nil || st.Mode().Perm() != 0o400 {
		t.Errorf("root layer mode %v %v, want 0400", st.Mode().Perm(), err)
	}
	if !has(h.drv.Calls(), "save "+one.ID, "restore "+one.ID+" share=false", "identity "+one.ID+" hostname= keys=0") {
		t.Errorf("calls %v", h.drv.Calls())
	}
	agentAnswers(t, d, one)
}

func TestFakeCreateFromSnapshot(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	s := h.mustSnapshot(d, "one", "s1", true)
	if one := h.vm(d, "one"); one.State != api.VMStopped || h.drv.Alive(d.proc(one)) {
		t.Fatalf("--stop left %+v", one)
	}
	id, err := d.CreateVM(context.Background(), api.CreateVMRequest{Name: "c1", Snapshot: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	op := h.waitOp(d, id)
	if op.State != api.OpSucceeded {
		t.Fatalf("create from snapshot: %s (%v)", op.Error, stageNames(op))
	}
	want := []string{"prepare=succeeded", "layers=succeeded", "restore=succeeded", "agent=succeeded", "identity=succeeded"}
	if got := stageNames(op); !slices.Equal(got, want) {
		t.Errorf("stages %v, want %v", got, want)
	}
	c1 := h.vm(d, "c1")
	if c1.State != api.VMRunning || c1.SnapshotID != s.ID || c1.CPUs != s.CPUs || c1.MemoryMiB != s.MemoryMiB {
		t.Fatalf("c1 %+v", c1)
	}
	if !has(h.drv.Calls(), "restore "+c1.ID+" share=true", "identity "+c1.ID+" hostname=c1 keys=1") {
		t.Errorf("calls %v", h.drv.Calls())
	}
	// Its seed disk is the snapshot's; its host key its own.
	a, _ := os.ReadFile(filepath.Join(c1.Dir, paths.FileSeedDisk))
	b, _ := os.ReadFile(filepath.Join(s.Dir, snapFileSeed))
	if string(a) != string(b) {
		t.Error("c1's seed disk is not the snapshot's")
	}
	// What stands on s1 keeps it.
	err = snapshotAPI{d.Daemon}.DeleteSnapshot(context.Background(), "s1", false)
	if err == nil || !strings.Contains(err.Error(), "c1") || !strings.Contains(err.Error(), "one") {
		t.Fatalf("delete of a used snapshot: %v", err)
	}
	if v, err := (snapshotAPI{d.Daemon}).GetSnapshot(context.Background(), "s1"); err != nil || !slices.Contains(v.UsedBy, "c1") {
		t.Errorf("view %+v %v", v, err)
	}
	for _, n := range []string{"c1", "one"} {
		if err := d.DeleteVM(context.Background(), n, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := (snapshotAPI{d.Daemon}).DeleteSnapshot(context.Background(), "s1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("snapshot dir left: %v", err)
	}
}

func TestFakeSnapshotSaveFails(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	h.drv.SaveErr = errors.New("disk full")
	op := h.snapshot(d, "one", "s1", false)
	if op.State != api.OpFailed || failedStage(op) != "save" || !strings.Contains(op.Error, "disk full") {
		t.Fatalf("op %s %q %v", op.State, op.Error, stageNames(op))
	}
	if _, err := d.store.GetSnapshot(context.Background(), "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("snapshot row left: %v", err)
	}
	if ents, _ := os.ReadDir(d.snapshotsDir()); len(ents) != 0 {
		t.Errorf("snapshot dirs left: %v", ents)
	}
	one := h.vm(d, "one")
	if one.State != api.VMStopped || one.SnapshotID != "" {
		t.Fatalf("VM after a failed save: %+v", one)
	}
	// Its disks are intact: it boots.
	h.drv.SaveErr = nil
	if _, err := d.StartVM(context.Background(), "one", api.StartVMRequest{}); err != nil {
		t.Fatal(err)
	}
}

func TestFakeSnapshotRefusals(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	s := h.mustSnapshot(d, "one", "s1", true)
	ctx := context.Background()
	// A snapshot of a stopped VM, a name taken, one that does not exist.
	if _, err := d.SnapshotVM(ctx, "one", api.SnapshotVMRequest{Name: "s2"}); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("snapshot of a stopped VM: %v", err)
	}
	if _, err := d.CreateVM(ctx, api.CreateVMRequest{Name: "x", Snapshot: "nosuch"}); err == nil || !strings.Contains(err.Error(), `no snapshot named "nosuch"`) {
		t.Errorf("unknown snapshot: %v", err)
	}
	if _, err := d.CreateVM(ctx, api.CreateVMRequest{Name: "x", Snapshot: "s1", MemoryMiB: 512}); err == nil || !strings.Contains(err.Error(), "--memory") {
		t.Errorf("other memory size: %v", err)
	}
	// Another VMM version.
	h.drv.Compat = "fake 2"
	if _, err := d.CreateVM(ctx, api.CreateVMRequest{Name: "x", Snapshot: "s1"}); err == nil || !strings.Contains(err.Error(), "fake 2") {
		t.Errorf("other VMM version: %v", err)
	}
	h.drv.Compat = ""
	// A truncated state file.
	if err := os.WriteFile(filepath.Join(s.Dir, snapDirVMM, "fake-state"), []byte("fake-vm"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := d.CreateVM(ctx, api.CreateVMRequest{Name: "x", Snapshot: "s1"})
	if err == nil || !strings.Contains(err.Error(), `snapshot "s1" is unusable`) {
		t.Errorf("truncated snapshot: %v", err)
	}
	if _, err := d.store.GetVM(ctx, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("row of x left: %v", err)
	}
}

func TestFakeFork(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	id, err := d.ForkVM(context.Background(), "one", api.ForkVMRequest{Count: 2, Prefix: "f"})
	if err != nil {
		t.Fatal(err)
	}
	op := h.waitOp(d, id)
	if op.State != api.OpSucceeded {
		t.Fatalf("fork: %s (%v)", op.Error, stageNames(op))
	}
	one := h.vm(d, "one")
	if one.State != api.VMRunning {
		t.Errorf("parent %s after the fork", one.State)
	}
	for _, n := range []string{"f-1", "f-2"} {
		c := h.vm(d, n)
		if c.State != api.VMRunning || c.SnapshotID != one.SnapshotID || !h.drv.Alive(d.proc(c)) {
			t.Errorf("child %+v", c)
		}
		if !has(h.drv.Calls(), "identity "+c.ID+" hostname="+n+" keys=1") {
			t.Errorf("%s got no identity: %v", n, h.drv.Calls())
		}
	}
	if _, err := d.ForkVM(context.Background(), "one", api.ForkVMRequest{Count: 1, Prefix: "f"}); err == nil || !strings.Contains(err.Error(), "f-1") {
		t.Errorf("fork onto taken names: %v", err)
	}
	if _, err := d.ForkVM(context.Background(), "one", api.ForkVMRequest{Count: 99}); err == nil {
		t.Error("fork of 99 accepted")
	}
}

func TestFakeParkWake(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	one := h.mustCreate(d, "one")
	parked, err := d.ParkVM(context.Background(), "one")
	if err != nil {
		t.Fatal(err)
	}
	if parked.State != api.VMParked || h.drv.Alive(d.proc(one)) || len(h.drv.Live()) != 0 {
		t.Fatalf("parked %+v, live %v", parked, h.drv.Live())
	}
	if _, err := os.Stat(parkDir(parked)); err != nil {
		t.Fatalf("park dir: %v", err)
	}
	// A restarted daemon leaves it parked.
	h.close(d)
	d = h.open()
	if vm := h.vm(d, "one"); vm.State != api.VMParked {
		t.Fatalf("after a daemon restart: %s", vm.State)
	}
	// A use wakes it.
	woke, err := d.useVM(context.Background(), "one")
	if err != nil {
		t.Fatal(err)
	}
	if woke.State != api.VMRunning || !h.drv.Alive(d.proc(woke)) {
		t.Fatalf("woken %+v", woke)
	}
	if _, err := os.Stat(parkDir(woke)); !os.IsNotExist(err) {
		t.Errorf("park dir left after the wake: %v", err)
	}
	if !has(h.drv.Calls(), "save "+one.ID, "restore "+one.ID+" share=false") {
		t.Errorf("calls %v", h.drv.Calls())
	}
	agentAnswers(t, d, woke)
	// Stopping a parked VM forgets its memory.
	if _, err := d.ParkVM(context.Background(), "one"); err != nil {
		t.Fatal(err)
	}
	stopped, err := d.StopVM(context.Background(), "one", false)
	if err != nil || stopped.State != api.VMStopped {
		t.Fatalf("stop of a parked VM: %+v %v", stopped, err)
	}
	if _, err := os.Stat(parkDir(stopped)); !os.IsNotExist(err) {
		t.Errorf("park dir left after stop: %v", err)
	}
}

// A daemon killed while a snapshot's disks moved: the next one finishes
// the layers (the VM can no longer go back), one killed during the save
// drops the snapshot.
func TestFakeSnapshotCrash(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	s := h.mustSnapshot(d, "one", "s1", true)
	ctx := context.Background()
	one := h.vm(d, "one")
	// As if killed after the root disk moved: no overlays, no link.
	for _, f := range []string{paths.FileRootRaw, paths.FileWorkDisk} {
		if err := os.Remove(filepath.Join(one.Dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	one.SnapshotID = ""
	if err := d.store.UpdateVM(ctx, &one); err != nil {
		t.Fatal(err)
	}
	s.State = store.SnapshotLayering
	if err := d.store.UpdateSnapshot(ctx, &s); err != nil {
		t.Fatal(err)
	}
	// And a second snapshot killed during its save.
	half := store.Snapshot{ID: "5a7e0001", Name: "half", Kind: api.SnapshotUser, State: store.SnapshotSaving, VMID: one.ID, ImageID: one.ImageID, Dir: filepath.Join(d.snapshotsDir(), "5a7e0001")}
	mkdirs(t, filepath.Join(half.Dir, snapDirVMM))
	if err := d.store.CreateSnapshot(ctx, &half); err != nil {
		t.Fatal(err)
	}
	// And a directory nobody recorded.
	mkdirs(t, filepath.Join(d.snapshotsDir(), "0rphan00"))
	h.close(d)
	d = h.open()
	got, err := d.store.GetSnapshot(ctx, "s1")
	if err != nil || got.State != store.SnapshotReady {
		t.Fatalf("s1 after reconcile: %+v %v", got, err)
	}
	one = h.vm(d, "one")
	if one.SnapshotID != s.ID {
		t.Errorf("one does not stand on s1 after reconcile")
	}
	for _, f := range []string{paths.FileRootRaw, paths.FileWorkDisk} {
		if _, err := os.Stat(filepath.Join(one.Dir, f)); err != nil {
			t.Errorf("overlay %s not made: %v", f, err)
		}
	}
	if _, err := d.store.GetSnapshot(ctx, "half"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("interrupted save kept: %v", err)
	}
	for _, dir := range []string{half.Dir, filepath.Join(d.snapshotsDir(), "0rphan00")} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", dir, err)
		}
	}
	if _, err := d.StartVM(ctx, "one", api.StartVMRequest{}); err != nil {
		t.Fatal(err)
	}
}

// A snapshot whose layering was cut short and whose VM is gone (deleted
// after the failed snapshot) cannot be finished: the next daemon removes
// it rather than keeping its files forever, invisible and undeletable.
func TestFakeSnapshotLayeringVMGone(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	s := h.mustSnapshot(d, "one", "s1", true)
	ctx := context.Background()
	one := h.vm(d, "one")
	s.State = store.SnapshotLayering
	if err := d.store.UpdateSnapshot(ctx, &s); err != nil {
		t.Fatal(err)
	}
	one.SnapshotID = ""
	if err := d.store.UpdateVM(ctx, &one); err != nil {
		t.Fatal(err)
	}
	if _, err := d.StopVM(ctx, "one", true); err != nil {
		t.Fatal(err)
	}
	if err := d.store.DeleteVM(ctx, one.ID); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(one.Dir)
	h.close(d)
	d = h.open()
	if _, err := d.store.GetSnapshot(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("snapshot of a deleted VM kept in state layering: %v", err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("its directory is left: %v", err)
	}
}

// A snapshot whose layers stage failed (not a crash: the daemon runs
// on) leaves its VM's disks half moved; `vm start` finishes the layers
// instead of failing on a missing disk until the daemon restarts.
func TestFakeStartFinishesLayering(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	h.mustCreate(d, "one")
	s := h.mustSnapshot(d, "one", "s1", true)
	ctx := context.Background()
	if _, err := d.StopVM(ctx, "one", true); err != nil {
		t.Fatal(err)
	}
	one := h.vm(d, "one")
	for _, f := range []string{paths.FileRootRaw, paths.FileWorkDisk} {
		if err := os.Remove(filepath.Join(one.Dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	one.SnapshotID = ""
	if err := d.store.UpdateVM(ctx, &one); err != nil {
		t.Fatal(err)
	}
	s.State = store.SnapshotLayering
	if err := d.store.UpdateSnapshot(ctx, &s); err != nil {
		t.Fatal(err)
	}
	if _, err := d.StartVM(ctx, "one", api.StartVMRequest{}); err != nil {
		t.Fatalf("start after a failed layers stage: %v", err)
	}
	if got, err := d.store.GetSnapshot(ctx, "s1"); err != nil || got.State != store.SnapshotReady {
		t.Fatalf("s1: %+v %v", got, err)
	}
	if one = h.vm(d, "one"); one.SnapshotID != s.ID {
		t.Errorf("one does not stand on s1")
	}
}
