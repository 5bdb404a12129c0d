package store

import (
	"context"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"
)

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")

	vm := VM{
		Name: "dev", ImageID: img.ID, CPUs: 2, MemoryMiB: 2048, WorkDiskBytes: 16 << 30,
		Egress: "none", Accel: "tcg", PID: 4242, PIDStartTime: math.MaxUint64 - 1,
		Dir: "/var/lib/banger/vms/x", SSHPort: 2222, WorkSeedFingerprint: "abc123",
	}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if len(vm.ID) != 8 || vm.State != VMStateCreating || vm.CreatedAt.IsZero() || !vm.UpdatedAt.Equal(vm.CreatedAt) {
		t.Fatalf("CreateVM did not fill defaults: %+v", vm)
	}
	for _, key := range []string{vm.ID, vm.Name} {
		got, err := s.GetVM(ctx, key)
		if err != nil {
			t.Fatalf("GetVM(%q): %v", key, err)
		}
		if !reflect.DeepEqual(got, vm) {
			t.Errorf("GetVM(%q) = %+v, want %+v", key, got, vm)
		}
	}

	before := vm.UpdatedAt
	time.Sleep(time.Millisecond)
	vm.State = VMStateRunning
	vm.PID = 99
	vm.Name = "dev2"
	vm.WorkSeedFingerprint = "def456"
	vm.AuthSyncedJSON = `[".claude.json"]`
	if err := s.UpdateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if !vm.UpdatedAt.After(before) {
		t.Errorf("UpdateVM did not bump UpdatedAt: %v -> %v", before, vm.UpdatedAt)
	}
	got, err := s.GetVM(ctx, "dev2")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, vm) {
		t.Errorf("after update got %+v, want %+v", got, vm)
	}

	if err := s.SetVMState(ctx, vm.ID, VMStateError, "qemu exited"); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != VMStateError || got.LastError != "qemu exited" || !got.UpdatedAt.After(vm.UpdatedAt) {
		t.Errorf("after SetVMState: %+v", got)
	}
	if err := s.SetVMState(ctx, vm.ID, VMStateRunning, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetVM(ctx, vm.ID); got.LastError != "" {
		t.Errorf("LastError not cleared: %q", got.LastError)
	}
	// An error keeps the pid (the process may live on); stopped drops it.
	vm.PID, vm.PIDStartTime = 4242, 99
	if err := s.UpdateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if err := s.SetVMState(ctx, vm.ID, VMStateError, "stop failed"); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetVM(ctx, vm.ID); got.PID != 4242 {
		t.Errorf("error state dropped the pid: %d", got.PID)
	}
	if err := s.SetVMState(ctx, vm.ID, VMStateStopped, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetVM(ctx, vm.ID); got.PID != 0 || got.PIDStartTime != 0 {
		t.Errorf("stopped VM keeps pid %d (start %d)", got.PID, got.PIDStartTime)
	}

	other := mustVM(t, s, "other", img.ID)
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != vm.ID || list[1].ID != other.ID {
		t.Errorf("ListVMs = %+v", list)
	}
	users, err := s.VMsUsingImage(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 {
		t.Errorf("VMsUsingImage = %d VMs, want 2", len(users))
	}

	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, vm.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM after delete = %v, want ErrNotFound", err)
	}
}

func TestVMErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		op   func(s *Store, img Image, existing VM) error
		want error
	}{
		{"duplicate name", func(s *Store, img Image, _ VM) error {
			return s.CreateVM(ctx, &VM{Name: "dev", ImageID: img.ID})
		}, ErrExists},
		{"duplicate id", func(s *Store, img Image, e VM) error {
			return s.CreateVM(ctx, &VM{ID: e.ID, Name: "other", ImageID: img.ID})
		}, ErrExists},
		{"rename onto taken name", func(s *Store, img Image, _ VM) error {
			other := mustVM(t, s, "other", img.ID)
			other.Name = "dev"
			return s.UpdateVM(ctx, &other)
		}, ErrExists},
		{"unknown image", func(s *Store, _ Image, _ VM) error {
			return s.CreateVM(ctx, &VM{Name: "other", ImageID: "nope"})
		}, ErrNotFound},
		{"update to unknown image", func(s *Store, _ Image, e VM) error {
			e.ImageID = "nope"
			return s.UpdateVM(ctx, &e)
		}, ErrNotFound},
		{"missing name", func(s *Store, img Image, _ VM) error {
			return s.CreateVM(ctx, &VM{ImageID: img.ID})
		}, ErrInvalid},
		{"unknown state", func(s *Store, img Image, _ VM) error {
			return s.CreateVM(ctx, &VM{Name: "x", ImageID: img.ID, State: "paused"})
		}, ErrInvalid},
		{"set unknown state", func(s *Store, _ Image, e VM) error {
			return s.SetVMState(ctx, e.ID, "paused", "")
		}, ErrInvalid},
		{"get unknown", func(s *Store, _ Image, _ VM) error {
			_, err := s.GetVM(ctx, "nope")
			return err
		}, ErrNotFound},
		{"update unknown", func(s *Store, img Image, _ VM) error {
			return s.UpdateVM(ctx, &VM{ID: "nope", Name: "x", ImageID: img.ID, State: VMStateStopped})
		}, ErrNotFound},
		{"set state unknown", func(s *Store, _ Image, _ VM) error {
			return s.SetVMState(ctx, "nope", VMStateStopped, "")
		}, ErrNotFound},
		{"delete unknown", func(s *Store, _ Image, _ VM) error {
			return s.DeleteVM(ctx, "nope")
		}, ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			img := mustImage(t, s, "debian")
			existing := mustVM(t, s, "dev", img.ID)
			if err := tc.op(s, img, existing); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			got, err := s.GetVM(ctx, existing.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, existing) {
				t.Errorf("existing vm changed: %+v", got)
			}
		})
	}
}

func TestDeleteVMCascadesPorts(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	doomed := mustVM(t, s, "doomed", img.ID)
	kept := mustVM(t, s, "kept", img.ID)
	ports := []int{30001, 30002, 30003}
	next := 0
	candidate := func() (int, error) { next++; return ports[next-1], nil }
	for _, id := range []string{doomed.ID, doomed.ID, kept.ID} {
		if _, err := s.AllocatePort(ctx, id, 22, candidate); err != nil {
			t.Fatal(err)
		}
	}

	if err := s.DeleteVM(ctx, doomed.ID); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM ports WHERE vm_id = ?`, doomed.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d ports left for the deleted vm", n)
	}
	left, err := s.PortsForVM(ctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Port != 30003 {
		t.Errorf("kept vm ports = %+v", left)
	}
}
