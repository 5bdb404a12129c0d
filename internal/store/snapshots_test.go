package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustSnapshot(t *testing.T, s *Store, name, imageID, parentID string) Snapshot {
	t.Helper()
	sn := Snapshot{Name: name, ImageID: imageID, ParentID: parentID, VMM: "qemu", CPUs: 2, MemoryMiB: 1024}
	if err := s.CreateSnapshot(context.Background(), &sn); err != nil {
		t.Fatalf("CreateSnapshot(%s): %v", name, err)
	}
	return sn
}

func TestSnapshotCRUD(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	vm := mustVM(t, s, "dev", img.ID)

	sn := Snapshot{
		Name: "dev-1", Kind: "user", VMID: vm.ID, VMName: vm.Name, ImageID: img.ID,
		VMM: "qemu", Compat: "qemu 7.2.0; accel tcg; cpu max", Accel: "tcg", CPUs: 2,
		MemoryMiB: 1024, WorkDiskBytes: 4 << 30, NetMode: "user", Dir: "/var/lib/banger/snapshots/x",
		RootFormat: "qcow2", WorkFormat: "raw",
	}
	if err := s.CreateSnapshot(ctx, &sn); err != nil {
		t.Fatal(err)
	}
	if len(sn.ID) != 8 || sn.State != SnapshotSaving || sn.CreatedAt.IsZero() {
		t.Fatalf("CreateSnapshot did not fill defaults: %+v", sn)
	}
	for _, key := range []string{sn.ID, sn.Name} {
		got, err := s.GetSnapshot(ctx, key)
		if err != nil {
			t.Fatalf("GetSnapshot(%q): %v", key, err)
		}
		if !reflect.DeepEqual(got, sn) {
			t.Errorf("GetSnapshot(%q) = %+v, want %+v", key, got, sn)
		}
	}

	if err := s.UpdateSnapshot(ctx, &Snapshot{ID: sn.ID, State: SnapshotReady, SizeBytes: 300 << 20, RootFormat: sn.RootFormat, WorkFormat: sn.WorkFormat}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetSnapshot(ctx, sn.ID)
	if got.State != SnapshotReady || got.SizeBytes != 300<<20 {
		t.Errorf("after UpdateSnapshot: %+v", got)
	}

	time.Sleep(time.Millisecond)
	later := mustSnapshot(t, s, "later", img.ID, "")
	list, err := s.ListSnapshots(ctx)
	if err != nil || len(list) != 2 || list[0].ID != sn.ID || list[1].ID != later.ID {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}

	if err := s.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSnapshot(ctx, sn.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetSnapshot after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete = %v, want ErrNotFound", err)
	}
}

func TestSnapshotErrors(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	mustSnapshot(t, s, "one", img.ID, "")

	cases := []struct {
		name string
		sn   Snapshot
		want error
	}{
		{"taken name", Snapshot{Name: "one", ImageID: img.ID}, ErrExists},
		{"no name", Snapshot{ImageID: img.ID}, ErrInvalid},
		{"no image", Snapshot{Name: "x"}, ErrInvalid},
		{"unknown image", Snapshot{Name: "x", ImageID: "nope"}, ErrNotFound},
		{"bad kind", Snapshot{Name: "x", ImageID: img.ID, Kind: "weird"}, ErrInvalid},
		{"bad state", Snapshot{Name: "x", ImageID: img.ID, State: "half"}, ErrInvalid},
	}
	for _, c := range cases {
		sn := c.sn
		if err := s.CreateSnapshot(ctx, &sn); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	if err := s.UpdateSnapshot(ctx, &Snapshot{ID: "nope", State: SnapshotReady, SizeBytes: 1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("update unknown: %v", err)
	}
	if err := s.UpdateSnapshot(ctx, &Snapshot{ID: "nope", State: "done", SizeBytes: 1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("update bad state: %v", err)
	}
	if _, err := s.GetSnapshot(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
	if _, _, err := s.SnapshotsStandingOn(ctx, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("standing on empty id: %v", err)
	}
}

// TestSnapshotUsers: VMs and child snapshots that stand on a snapshot
// are named, and keep it from being deleted until they are gone.
func TestSnapshotUsers(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	base := mustSnapshot(t, s, "base", img.ID, "")
	child := mustSnapshot(t, s, "child", img.ID, base.ID)

	vm := VM{Name: "fork-1", ImageID: img.ID, SnapshotID: base.ID}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	mustVM(t, s, "plain", img.ID)
	got, err := s.GetVM(ctx, "fork-1")
	if err != nil || got.SnapshotID != base.ID {
		t.Fatalf("GetVM: %+v, %v", got, err)
	}

	vms, children, err := s.SnapshotsStandingOn(ctx, base.ID)
	if err != nil || len(vms) != 1 || vms[0].Name != "fork-1" || len(children) != 1 || children[0].Name != "child" {
		t.Fatalf("SnapshotsStandingOn = %+v, %+v, %v", vms, children, err)
	}
	usage, err := s.SnapshotUsage(ctx)
	if err != nil || len(usage) != 1 || !reflect.DeepEqual(usage[base.ID], []string{"fork-1", "child"}) {
		t.Fatalf("SnapshotUsage = %v, %v", usage, err)
	}
	err = s.DeleteSnapshot(ctx, base.ID)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "vm fork-1; snapshot child") {
		t.Fatalf("delete in use: %v", err)
	}

	// Flattening the VM (its disks no longer stand on the snapshot) and
	// deleting the child frees it.
	vm.SnapshotID = ""
	if err := s.UpdateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, vm.ID); got.SnapshotID != "" {
		t.Fatalf("UpdateVM kept snapshot %q", got.SnapshotID)
	}
	if err := s.DeleteSnapshot(ctx, child.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSnapshot(ctx, base.ID); err != nil {
		t.Fatal(err)
	}
}

func TestImageReadySnapshot(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	sn := mustSnapshot(t, s, "debian-ready", img.ID, "")

	if err := s.SetImageReadySnapshot(ctx, img.ID, sn.ID); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetImage(ctx, img.ID)
	if got.ReadySnapshotID != sn.ID {
		t.Fatalf("ReadySnapshotID = %q", got.ReadySnapshotID)
	}
	// UpdateImage from a copy read before leaves it alone.
	img.SizeBytes = 7
	if err := s.UpdateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetImage(ctx, img.ID); got.ReadySnapshotID != sn.ID || got.SizeBytes != 7 {
		t.Fatalf("after UpdateImage: %+v", got)
	}
	if err := s.SetImageReadySnapshot(ctx, img.ID, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown snapshot: %v", err)
	}
	if err := s.SetImageReadySnapshot(ctx, "nope", sn.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown image: %v", err)
	}

	// The image cannot go while a snapshot stands on its rootfs.
	if err := s.DeleteImage(ctx, img.ID); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "snapshot debian-ready") {
		t.Fatalf("DeleteImage with a snapshot: %v", err)
	}
	// Deleting the snapshot clears it as the ready one.
	if err := s.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetImage(ctx, img.ID); got.ReadySnapshotID != "" {
		t.Fatalf("ReadySnapshotID after delete = %q", got.ReadySnapshotID)
	}
	if err := s.DeleteImage(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
}

func TestParkedIsAVMState(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	vm := mustVM(t, s, "dev", mustImage(t, s, "debian").ID)
	if err := s.SetVMState(ctx, vm.ID, VMStateParked, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, vm.ID); got.State != VMStateParked {
		t.Fatalf("state %q", got.State)
	}
}

// TestSnapshotMigrationKeepsRows: rows written before migration 9 read
// back with no snapshot.
func TestSnapshotMigrationKeepsRows(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	saved := migrations
	migrations = saved[:8]
	s, err := Open(ctx, path)
	if err != nil {
		migrations = saved
		t.Fatal(err)
	}
	_, err = s.db.Exec(`INSERT INTO images (id, name, dir, state, created_at) VALUES ('i1', 'debian', '/d', 'managed', '2026-01-01T00:00:00.000000000Z');
		INSERT INTO vms (id, name, image_id, state, created_at, updated_at) VALUES ('v1', 'dev', 'i1', 'stopped', '2026-01-01T00:00:00.000000000Z', '2026-01-01T00:00:00.000000000Z');`)
	s.Close()
	migrations = saved
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm, err := s.GetVM(ctx, "dev")
	if err != nil || vm.SnapshotID != "" {
		t.Fatalf("vm %+v, %v", vm, err)
	}
	img, err := s.GetImage(ctx, "debian")
	if err != nil || img.ReadySnapshotID != "" {
		t.Fatalf("image %+v, %v", img, err)
	}
	if list, err := s.ListSnapshots(ctx); err != nil || len(list) != 0 {
		t.Fatalf("snapshots %v, %v", list, err)
	}
}
