package store

import (
	"context"
	"errors"
	"testing"
)

func TestAllocateVMMUser(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "base")
	a, b, c := mustVM(t, s, "a", img.ID), mustVM(t, s, "b", img.ID), mustVM(t, s, "c", img.ID)
	const first, last = 3000000, 3000002
	// 3000001 runs a process already (another instance's VMM): skipped.
	busy := func(id uint32) bool { return id == 3000001 }

	ua, err := s.AllocateVMMUser(ctx, a.ID, first, last, busy)
	if err != nil || ua != 3000000 {
		t.Fatalf("first VM: uid %d, %v", ua, err)
	}
	ub, err := s.AllocateVMMUser(ctx, b.ID, first, last, busy)
	if err != nil || ub != 3000002 {
		t.Fatalf("second VM: uid %d, %v; want 3000002 (3000001 is busy)", ub, err)
	}
	// A VM keeps its uid across boots.
	if again, err := s.AllocateVMMUser(ctx, a.ID, first, last, busy); err != nil || again != ua {
		t.Fatalf("same VM again: uid %d, %v; want %d", again, err, ua)
	}
	if _, err := s.AllocateVMMUser(ctx, c.ID, first, last, busy); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full range: %v, want ErrExhausted", err)
	}
	// Deleting a VM releases its uid.
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.VMMUser(ctx, a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("uid of deleted VM: %v, want ErrNotFound", err)
	}
	if uc, err := s.AllocateVMMUser(ctx, c.ID, first, last, busy); err != nil || uc != ua {
		t.Fatalf("after delete: uid %d, %v; want the freed %d", uc, err, ua)
	}
	// A new range moves a VM into it.
	if ub2, err := s.AllocateVMMUser(ctx, b.ID, 4000000, 4000009, nil); err != nil || ub2 != 4000000 {
		t.Fatalf("new range: uid %d, %v", ub2, err)
	}
	// Throwaway VMs (no row) hold uids until released or pruned.
	if u, err := s.AllocateVMMUser(ctx, "vthrowaway", 4000000, 4000009, nil); err != nil || u != 4000001 {
		t.Fatalf("throwaway: uid %d, %v", u, err)
	}
	if n, err := s.PruneVMMUsers(ctx); err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want 1 (the throwaway)", n, err)
	}
	if _, err := s.VMMUser(ctx, b.ID); err != nil {
		t.Fatalf("prune took a live VM's uid: %v", err)
	}
	for _, bad := range [][2]uint32{{0, 5}, {10, 9}} {
		if _, err := s.AllocateVMMUser(ctx, c.ID, bad[0], bad[1], nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("range %v: %v, want ErrInvalid", bad, err)
		}
	}
}
