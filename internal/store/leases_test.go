package store

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func TestAllocateLease(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "base")
	subnet := netip.MustParsePrefix("172.30.0.0/29") // hosts .1-.6; .1 is the bridge
	var vms []VM
	for _, n := range []string{"a", "b", "c", "d", "e", "f"} {
		vms = append(vms, mustVM(t, s, n, img.ID))
	}
	want := []string{"172.30.0.2/29", "172.30.0.3/29", "172.30.0.4/29", "172.30.0.5/29", "172.30.0.6/29"}
	for i, w := range want {
		l, err := s.AllocateLease(ctx, vms[i].ID, subnet, "tap"+vms[i].Name, "0a:00:00:00:00:0"+vms[i].Name[:1])
		if err != nil {
			t.Fatalf("AllocateLease %d: %v", i, err)
		}
		if l.Addr.String() != w {
			t.Errorf("lease %d = %s, want %s", i, l.Addr, w)
		}
	}
	// .7 is the broadcast address: the subnet is full.
	if _, err := s.AllocateLease(ctx, vms[5].ID, subnet, "tapf", "m"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full subnet: err = %v, want ErrExhausted", err)
	}
	// Releasing frees the address for the next VM; the lowest goes first.
	if err := s.ReleaseLease(ctx, vms[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, vms[1].ID); err != nil {
		t.Fatalf("second release: %v", err)
	}
	l, err := s.AllocateLease(ctx, vms[5].ID, subnet, "tapf", "m")
	if err != nil || l.Addr.String() != "172.30.0.3/29" {
		t.Fatalf("reuse: %v %v", l.Addr, err)
	}
	got, err := s.LeaseForVM(ctx, vms[5].ID)
	if err != nil || got != l {
		t.Fatalf("LeaseForVM = %+v, %v; want %+v", got, err, l)
	}
	if _, err := s.LeaseForVM(ctx, vms[1].ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("released lease: %v", err)
	}
}

func TestAllocateLeaseUniqueness(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "base")
	a, b := mustVM(t, s, "a", img.ID), mustVM(t, s, "b", img.ID)
	subnet := netip.MustParsePrefix("10.9.0.0/24")
	if _, err := s.AllocateLease(ctx, a.ID, subnet, "tap0", "m"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AllocateLease(ctx, a.ID, subnet, "tap1", "m"); !errors.Is(err, ErrExists) {
		t.Errorf("second lease for one VM: %v", err)
	}
	if _, err := s.AllocateLease(ctx, b.ID, subnet, "tap0", "m"); !errors.Is(err, ErrExists) {
		t.Errorf("shared TAP: %v", err)
	}
	if _, err := s.AllocateLease(ctx, "nope", subnet, "tap9", "m"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown VM: %v", err)
	}
	if _, err := s.AllocateLease(ctx, b.ID, netip.MustParsePrefix("10.9.0.0/31"), "tapb", "m"); !errors.Is(err, ErrInvalid) {
		t.Errorf("tiny subnet: %v", err)
	}
	// Deleting the VM drops its lease with it.
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if ls, err := s.ListLeases(ctx); err != nil || len(ls) != 0 {
		t.Errorf("leases after VM delete: %v %v", ls, err)
	}
}

func TestFirstFreeAddr(t *testing.T) {
	p := netip.MustParsePrefix("192.168.5.0/30") // only .2 is a guest address
	a, ok := FirstFreeAddr(p, nil)
	if !ok || a.String() != "192.168.5.2" {
		t.Fatalf("got %v %v", a, ok)
	}
	if _, ok := FirstFreeAddr(p, map[netip.Addr]bool{a: true}); ok {
		t.Fatal("full /30 still has room")
	}
}
