package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"
)

func mustOp(t *testing.T, s *Store, target string) Operation {
	t.Helper()
	op := Operation{Kind: OpKindVMCreate, Target: target}
	if err := s.CreateOperation(context.Background(), &op); err != nil {
		t.Fatal(err)
	}
	return op
}

func TestOperationLifecycle(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	op := mustOp(t, s, "dev")
	if op.ID == "" || op.State != OpStateRunning || op.CreatedAt.IsZero() {
		t.Fatalf("CreateOperation did not fill defaults: %+v", op)
	}

	names := []string{"image", "disk", "network", "boot", "agent"}
	for i, name := range names {
		st, err := s.StartStage(ctx, op.ID, name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Seq != i+1 {
			t.Errorf("stage %s seq = %d, want %d", name, st.Seq, i+1)
		}
		if name == "agent" {
			break // left running; FinishOperation must close it
		}
		state := StageStateSucceeded
		if name == "network" {
			state = StageStateSkipped
		}
		if err := s.FinishStage(ctx, op.ID, st.Seq, state, "", "detail "+name); err != nil {
			t.Fatal(err)
		}
	}

	got, err := s.GetOperation(ctx, op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Stages) != len(names) {
		t.Fatalf("%d stages, want %d", len(got.Stages), len(names))
	}
	for i, st := range got.Stages {
		if st.Seq != i+1 || st.Name != names[i] || st.OpID != op.ID {
			t.Errorf("stage %d = %+v", i, st)
		}
	}
	if st := got.Stages[2]; st.State != StageStateSkipped || st.Detail != "detail network" || st.FinishedAt == nil {
		t.Errorf("network stage = %+v", st)
	}
	if st := got.Stages[4]; st.State != StageStateRunning || st.FinishedAt != nil {
		t.Errorf("agent stage = %+v", st)
	}

	if err := s.FinishOperation(ctx, op.ID, OpStateFailed, "agent timeout", "see console", "kernel panic", ""); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetOperation(ctx, op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != OpStateFailed || got.Error != "agent timeout" || got.Hint != "see console" ||
		got.ConsoleTail != "kernel panic" || got.FinishedAt == nil || got.FinishedAt.Before(got.CreatedAt) {
		t.Errorf("finished op = %+v", got)
	}
	if st := got.Stages[4]; st.State != StageStateFailed || st.Error != "agent timeout" || st.FinishedAt == nil {
		t.Errorf("running stage not failed with the operation: %+v", st)
	}
	if st := got.Stages[0]; st.State != StageStateSucceeded || st.Error != "" {
		t.Errorf("finished stage changed by FinishOperation: %+v", st)
	}
}

func TestOperationErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		op   func(s *Store, running, finished Operation) error
		want error
	}{
		{"create without kind", func(s *Store, _, _ Operation) error {
			return s.CreateOperation(ctx, &Operation{})
		}, ErrInvalid},
		{"create finished", func(s *Store, _, _ Operation) error {
			return s.CreateOperation(ctx, &Operation{Kind: OpKindImageBuild, State: OpStateSucceeded})
		}, ErrInvalid},
		{"create duplicate id", func(s *Store, r, _ Operation) error {
			return s.CreateOperation(ctx, &Operation{ID: r.ID, Kind: OpKindImageBuild})
		}, ErrExists},
		{"get unknown", func(s *Store, _, _ Operation) error {
			_, err := s.GetOperation(ctx, "nope")
			return err
		}, ErrNotFound},
		{"stage on unknown op", func(s *Store, _, _ Operation) error {
			_, err := s.StartStage(ctx, "nope", "boot")
			return err
		}, ErrNotFound},
		{"stage on finished op", func(s *Store, _, f Operation) error {
			_, err := s.StartStage(ctx, f.ID, "boot")
			return err
		}, ErrConflict},
		{"stage without name", func(s *Store, r, _ Operation) error {
			_, err := s.StartStage(ctx, r.ID, "")
			return err
		}, ErrInvalid},
		{"finish unknown stage", func(s *Store, r, _ Operation) error {
			return s.FinishStage(ctx, r.ID, 7, StageStateSucceeded, "", "")
		}, ErrNotFound},
		{"finish stage twice", func(s *Store, r, _ Operation) error {
			st, err := s.StartStage(ctx, r.ID, "boot")
			if err != nil {
				return err
			}
			if err := s.FinishStage(ctx, r.ID, st.Seq, StageStateSucceeded, "", ""); err != nil {
				return err
			}
			return s.FinishStage(ctx, r.ID, st.Seq, StageStateFailed, "late", "")
		}, ErrConflict},
		{"finish stage as running", func(s *Store, r, _ Operation) error {
			return s.FinishStage(ctx, r.ID, 1, StageStateRunning, "", "")
		}, ErrInvalid},
		{"finish op twice", func(s *Store, _, f Operation) error {
			return s.FinishOperation(ctx, f.ID, OpStateFailed, "again", "", "", "")
		}, ErrConflict},
		{"finish unknown op", func(s *Store, _, _ Operation) error {
			return s.FinishOperation(ctx, "nope", OpStateSucceeded, "", "", "", "")
		}, ErrNotFound},
		{"finish op as running", func(s *Store, r, _ Operation) error {
			return s.FinishOperation(ctx, r.ID, OpStateRunning, "", "", "", "")
		}, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			running := mustOp(t, s, "a")
			finished := mustOp(t, s, "b")
			if err := s.FinishOperation(ctx, finished.ID, OpStateSucceeded, "", "", "", `{"id":"x"}`); err != nil {
				t.Fatal(err)
			}
			if err := tc.op(s, running, finished); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			got, err := s.GetOperation(ctx, finished.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != OpStateSucceeded || got.Error != "" || got.ResultJSON != `{"id":"x"}` {
				t.Errorf("finished operation changed: %+v", got)
			}
		})
	}
}

func TestListOperations(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 5 {
		op := Operation{Kind: OpKindImageBuild, Target: fmt.Sprint(i), CreatedAt: t0.Add(time.Duration(i) * time.Minute)}
		if err := s.CreateOperation(ctx, &op); err != nil {
			t.Fatal(err)
		}
		for range i { // op i has i stages
			if _, err := s.StartStage(ctx, op.ID, "step"); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, op.ID)
	}

	tests := []struct {
		limit   int
		wantIDs []string
	}{
		{0, []string{ids[4], ids[3], ids[2], ids[1], ids[0]}},
		{2, []string{ids[4], ids[3]}},
		{10, []string{ids[4], ids[3], ids[2], ids[1], ids[0]}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("limit ", tc.limit), func(t *testing.T) {
			ops, err := s.ListOperations(ctx, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, op := range ops {
				got = append(got, op.ID)
				n, err := strconv.Atoi(op.Target)
				if err != nil {
					t.Fatal(err)
				}
				if len(op.Stages) != n {
					t.Errorf("op %s has %d stages, want %d", op.Target, len(op.Stages), n)
				}
				for i, st := range op.Stages {
					if st.Seq != i+1 {
						t.Errorf("op %s stage %d has seq %d", op.Target, i, st.Seq)
					}
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantIDs) {
				t.Errorf("ids = %v, want %v", got, tc.wantIDs)
			}
		})
	}
}

func TestFailDanglingOperations(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir() + "/banger.db"
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	dangling := mustOp(t, s, "dangling")
	st1, _ := s.StartStage(ctx, dangling.ID, "disk")
	if err := s.FinishStage(ctx, dangling.ID, st1.Seq, StageStateSucceeded, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartStage(ctx, dangling.ID, "boot"); err != nil {
		t.Fatal(err)
	}
	done := mustOp(t, s, "done")
	if err := s.FinishOperation(ctx, done.ID, OpStateSucceeded, "", "", "", ""); err != nil {
		t.Fatal(err)
	}
	s.Close() // the daemon dies

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n, err := s.FailDanglingOperations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("failed %d operations, want 1", n)
	}

	got, err := s.GetOperation(ctx, dangling.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != OpStateFailed || got.Error != DanglingOpError || got.FinishedAt == nil {
		t.Errorf("dangling op = %+v", got)
	}
	if st := got.Stages[0]; st.State != StageStateSucceeded || st.Error != "" {
		t.Errorf("finished stage changed: %+v", st)
	}
	if st := got.Stages[1]; st.State != StageStateFailed || st.Error != DanglingOpError || st.FinishedAt == nil {
		t.Errorf("running stage = %+v", st)
	}
	if got, _ := s.GetOperation(ctx, done.ID); got.State != OpStateSucceeded || got.Error != "" {
		t.Errorf("finished op changed: %+v", got)
	}

	// A second call finds nothing left to fail.
	if n, err := s.FailDanglingOperations(ctx); err != nil || n != 0 {
		t.Errorf("second FailDanglingOperations = %d, %v", n, err)
	}
}

func TestPruneOperations(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	cutoff := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	mk := func(age time.Duration, finish bool) string {
		op := Operation{Kind: OpKindVMCreate, CreatedAt: cutoff.Add(age)}
		if err := s.CreateOperation(ctx, &op); err != nil {
			t.Fatal(err)
		}
		if _, err := s.StartStage(ctx, op.ID, "boot"); err != nil {
			t.Fatal(err)
		}
		if finish {
			if err := s.FinishOperation(ctx, op.ID, OpStateSucceeded, "", "", "", ""); err != nil {
				t.Fatal(err)
			}
		}
		return op.ID
	}
	oldDone := mk(-time.Hour, true)
	oldRunning := mk(-time.Hour, false)
	newDone := mk(time.Hour, true)

	n, err := s.PruneOperations(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("pruned %d, want 1", n)
	}
	if _, err := s.GetOperation(ctx, oldDone); !errors.Is(err, ErrNotFound) {
		t.Errorf("old finished op still there: %v", err)
	}
	for _, id := range []string{oldRunning, newDone} {
		if _, err := s.GetOperation(ctx, id); err != nil {
			t.Errorf("op %s pruned: %v", id, err)
		}
	}
	var stages int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM stages WHERE op_id = ?`, oldDone).Scan(&stages); err != nil {
		t.Fatal(err)
	}
	if stages != 0 {
		t.Errorf("%d stages of the pruned op left", stages)
	}
}
