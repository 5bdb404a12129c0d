package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestEgressLog(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	a := mustVM(t, s, "a", img.ID)
	b := mustVM(t, s, "b", img.ID)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for i := range 10 {
		for _, vm := range []VM{a, b} {
			dec := "allow"
			if i%3 == 0 {
				dec = "deny"
			}
			r := EgressRecord{VMID: vm.ID, Time: t0.Add(time.Duration(i) * time.Second), Session: "s1", PID: 7, Process: "curl",
				Proto: "tcp", Name: "x.example", Addr: "198.18.0.1", Port: 443, Decision: dec, Rule: "x.example", Policy: "agents",
				BytesUp: int64(i), BytesDown: 2, DurationMS: 3}
			if err := s.InsertEgressRecord(ctx, &r); err != nil || r.ID == 0 {
				t.Fatalf("insert: %v (id %d)", err, r.ID)
			}
		}
	}
	all, err := s.ListEgressLog(ctx, a.ID, EgressFilter{})
	if err != nil || len(all) != 10 {
		t.Fatalf("list: %d rows, %v", len(all), err)
	}
	if all[0].BytesUp != 0 || all[9].BytesUp != 9 || !all[0].Time.Equal(t0) || all[0].Process != "curl" || all[0].Port != 443 {
		t.Fatalf("rows out of order or fields lost: %+v", all[0])
	}
	denied, _ := s.ListEgressLog(ctx, a.ID, EgressFilter{Denied: true})
	if len(denied) != 4 {
		t.Errorf("denied: %d rows, want 4", len(denied))
	}
	last, _ := s.ListEgressLog(ctx, a.ID, EgressFilter{Limit: 3})
	if len(last) != 3 || last[2].ID != all[9].ID || last[0].ID != all[7].ID {
		t.Errorf("limit 3 = %+v, want the newest three, oldest first", last)
	}
	after, _ := s.ListEgressLog(ctx, a.ID, EgressFilter{After: all[7].ID})
	if got := []int64{after[0].ID, after[1].ID}; len(after) != 2 || !reflect.DeepEqual(got, []int64{all[8].ID, all[9].ID}) {
		t.Errorf("after = %+v", after)
	}

	n, err := s.PruneEgressLog(ctx, a.ID, 4)
	if err != nil || n != 6 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	kept, _ := s.ListEgressLog(ctx, a.ID, EgressFilter{})
	if len(kept) != 4 || kept[0].ID != all[6].ID {
		t.Errorf("prune kept %+v, want the newest four", kept)
	}
	if n, _ := s.PruneEgressLog(ctx, a.ID, 4); n != 0 {
		t.Errorf("second prune removed %d", n)
	}
	if other, _ := s.ListEgressLog(ctx, b.ID, EgressFilter{}); len(other) != 10 {
		t.Errorf("prune of a touched b: %d rows", len(other))
	}

	if err := s.DeleteVM(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if rows, _ := s.ListEgressLog(ctx, b.ID, EgressFilter{}); len(rows) != 0 {
		t.Errorf("rows of a deleted VM stayed: %d", len(rows))
	}
	r := EgressRecord{VMID: b.ID, Time: t0, Decision: "allow"}
	if err := s.InsertEgressRecord(ctx, &r); !errors.Is(err, ErrNotFound) {
		t.Errorf("insert for a deleted VM: %v", err)
	}
	if _, err := s.db.ExecContext(ctx, `PRAGMA foreign_keys = OFF`); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SweepEgressLog(ctx); err != nil || n != 0 {
		t.Errorf("sweep: %d, %v", n, err)
	}
}

func TestVMEgressColumns(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	vm := VM{Name: "g", ImageID: img.ID, Egress: "allow", EgressPolicy: "agents", EgressAllow: []string{"a.example"}, Credentials: "broker"}
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetVM(ctx, vm.ID)
	if got.EgressPolicy != "agents" || !reflect.DeepEqual(got.EgressAllow, []string{"a.example"}) || got.EgressDeny != nil || got.Credentials != "broker" {
		t.Fatalf("egress columns = %+v", got)
	}
	if err := s.SetVMEgress(ctx, vm.ID, []string{"a.example", "b.example:443"}, []string{"c.example"}); err != nil {
		t.Fatal(err)
	}
	// A lifecycle update with a stale copy keeps the live change.
	vm.State = VMStateRunning
	if err := s.UpdateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetVM(ctx, vm.ID)
	if !reflect.DeepEqual(got.EgressAllow, []string{"a.example", "b.example:443"}) || !reflect.DeepEqual(got.EgressDeny, []string{"c.example"}) {
		t.Fatalf("after SetVMEgress and UpdateVM: %+v / %+v", got.EgressAllow, got.EgressDeny)
	}
	if err := s.SetVMEgress(ctx, "nope", nil, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown vm: %v", err)
	}
}
