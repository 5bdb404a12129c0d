package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"
)

const opColumns = `id, kind, target, state, error, hint, console_tail,
	result_json, created_at, finished_at`

// CreateOperation inserts op in state running. An empty ID is generated
// and a zero CreatedAt becomes now; op is updated in place. op.Stages is
// not written: stages are added as they start, with StartStage.
func (s *Store) CreateOperation(ctx context.Context, op *Operation) error {
	if op.Kind == "" {
		return fmt.Errorf("create operation: kind is required: %w", ErrInvalid)
	}
	if op.State == "" {
		op.State = OpStateRunning
	}
	if op.State != OpStateRunning || op.FinishedAt != nil {
		return fmt.Errorf("create operation: a new operation must be running: %w", ErrInvalid)
	}
	if op.CreatedAt.IsZero() {
		op.CreatedAt = now()
	}
	op.CreatedAt = op.CreatedAt.UTC()
	err := insertWithID(&op.ID, "operations.id", func() error {
		_, err := s.q.ExecContext(ctx, `INSERT INTO operations (`+opColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)`,
			op.ID, op.Kind, op.Target, op.State, op.Error, op.Hint,
			op.ConsoleTail, op.ResultJSON, formatTime(op.CreatedAt))
		return err
	})
	if isUnique(err, "operations.id") {
		return fmt.Errorf("create operation: id %s: %w", op.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create operation: %w", err)
	}
	return nil
}

// GetOperation returns operation id with its stages in seq order.
func (s *Store) GetOperation(ctx context.Context, id string) (Operation, error) {
	ops, err := s.queryOperations(ctx, `WHERE id = ?`, -1, id)
	if err != nil {
		return Operation{}, fmt.Errorf("get operation %s: %w", id, err)
	}
	if len(ops) == 0 {
		return Operation{}, fmt.Errorf("operation %s: %w", id, ErrNotFound)
	}
	return ops[0], nil
}

// ListOperations returns the newest limit operations, newest first, each
// with its stages. limit <= 0 means all of them.
func (s *Store) ListOperations(ctx context.Context, limit int) ([]Operation, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	ops, err := s.queryOperations(ctx, "", limit)
	if err != nil {
		return nil, fmt.Errorf("list operations: %w", err)
	}
	return ops, nil
}

// queryOperations loads operations matching filter (a WHERE clause on the
// operations table, or "") together with their stages in one statement,
// so an operation and its stages come from the same snapshot even while a
// stage is being written.
func (s *Store) queryOperations(ctx context.Context, filter string, limit int, args ...any) ([]Operation, error) {
	query := `SELECT o.id, o.kind, o.target, o.state, o.error, o.hint,
		o.console_tail, o.result_json, o.created_at, o.finished_at,
		st.seq, st.name, st.state, st.started_at, st.finished_at, st.error, st.detail
	FROM (SELECT rowid AS rid, * FROM operations ` + filter + `
		ORDER BY created_at DESC, rowid DESC LIMIT ?) AS o
	LEFT JOIN stages AS st ON st.op_id = o.id
	ORDER BY o.created_at DESC, o.rid DESC, st.seq`
	rows, err := s.q.QueryContext(ctx, query, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()

	var ops []Operation
	for rows.Next() {
		var (
			op                  Operation
			created             string
			opFinished          sql.NullString
			seq                 sql.NullInt64
			name, state         sql.NullString
			started, stFinished sql.NullString
			stErr, detail       sql.NullString
		)
		if err := rows.Scan(&op.ID, &op.Kind, &op.Target, &op.State, &op.Error,
			&op.Hint, &op.ConsoleTail, &op.ResultJSON, &created, &opFinished,
			&seq, &name, &state, &started, &stFinished, &stErr, &detail); err != nil {
			return nil, err
		}
		// Rows of one operation are adjacent; only the first carries news
		// about the operation itself.
		if len(ops) == 0 || ops[len(ops)-1].ID != op.ID {
			if op.CreatedAt, err = parseTime(created); err != nil {
				return nil, err
			}
			if op.FinishedAt, err = parseTimePtr(opFinished); err != nil {
				return nil, err
			}
			ops = append(ops, op)
		}
		if !seq.Valid {
			continue // LEFT JOIN: an operation without stages
		}
		st := Stage{
			OpID:   op.ID,
			Seq:    int(seq.Int64),
			Name:   name.String,
			State:  state.String,
			Error:  stErr.String,
			Detail: detail.String,
		}
		if st.StartedAt, err = parseTime(started.String); err != nil {
			return nil, err
		}
		if st.FinishedAt, err = parseTimePtr(stFinished); err != nil {
			return nil, err
		}
		cur := &ops[len(ops)-1]
		cur.Stages = append(cur.Stages, st)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return ops, nil
}

// opStateErr explains why a write to a running operation matched nothing:
// the operation is missing (ErrNotFound) or already finished (ErrConflict).
func (s *Store) opStateErr(ctx context.Context, opID string) error {
	var state string
	err := s.q.QueryRowContext(ctx, `SELECT state FROM operations WHERE id = ?`, opID).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("operation %s: %w", opID, ErrNotFound)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("operation %s already %s: %w", opID, state, ErrConflict)
}

// StartStage appends a running stage named name to operation opID and
// returns it; its Seq is one past the operation's last stage. The
// operation must be running.
func (s *Store) StartStage(ctx context.Context, opID, name string) (Stage, error) {
	if name == "" {
		return Stage{}, fmt.Errorf("start stage of operation %s: name is required: %w", opID, ErrInvalid)
	}
	st := Stage{OpID: opID, Name: name, State: StageStateRunning, StartedAt: now()}
	// One statement computes the next seq and inserts it, so two stages
	// started at once cannot get the same seq; it also inserts nothing
	// when the operation is missing or finished.
	err := s.q.QueryRowContext(ctx, `INSERT INTO stages (op_id, seq, name, state, started_at)
		SELECT o.id, COALESCE((SELECT MAX(seq) FROM stages WHERE op_id = o.id), 0) + 1, ?, ?, ?
		FROM operations AS o WHERE o.id = ? AND o.state = ?
		RETURNING seq`,
		name, st.State, formatTime(st.StartedAt), opID, OpStateRunning).Scan(&st.Seq)
	if errors.Is(err, sql.ErrNoRows) {
		err = s.opStateErr(ctx, opID)
	}
	if err != nil {
		return Stage{}, fmt.Errorf("start stage %q: %w", name, err)
	}
	return st, nil
}

// FinishStage ends stage seq of operation opID with state succeeded,
// failed or skipped. Finishing a stage twice is ErrConflict.
func (s *Store) FinishStage(ctx context.Context, opID string, seq int, state, errText, detail string) error {
	if !slices.Contains([]string{StageStateSucceeded, StageStateFailed, StageStateSkipped}, state) {
		return fmt.Errorf("finish stage %d of operation %s: state %q: %w", seq, opID, state, ErrInvalid)
	}
	res, err := s.q.ExecContext(ctx, `UPDATE stages SET state = ?, finished_at = ?,
		error = ?, detail = ? WHERE op_id = ? AND seq = ? AND state = ?`,
		state, formatTime(now()), errText, detail, opID, seq, StageStateRunning)
	if err != nil {
		return fmt.Errorf("finish stage %d of operation %s: %w", seq, opID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("finish stage %d of operation %s: %w", seq, opID, err)
	}
	if n == 1 {
		return nil
	}
	var cur string
	err = s.q.QueryRowContext(ctx, `SELECT state FROM stages WHERE op_id = ? AND seq = ?`, opID, seq).Scan(&cur)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("stage %d of operation %s: %w", seq, opID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("finish stage %d of operation %s: %w", seq, opID, err)
	}
	return fmt.Errorf("stage %d of operation %s already %s: %w", seq, opID, cur, ErrConflict)
}

// FinishOperation ends operation id with state succeeded or failed.
// Stages still running end with it, in the operation's state and with its
// error, so a failed operation never shows a stage spinning forever.
// Finishing an operation twice is ErrConflict.
func (s *Store) FinishOperation(ctx context.Context, id, state, errText, hint, consoleTail, resultJSON string) error {
	if state != OpStateSucceeded && state != OpStateFailed {
		return fmt.Errorf("finish operation %s: state %q: %w", id, state, ErrInvalid)
	}
	return s.WithTx(ctx, func(tx *Store) error {
		finished := formatTime(now())
		res, err := tx.q.ExecContext(ctx, `UPDATE operations SET state = ?, error = ?,
			hint = ?, console_tail = ?, result_json = ?, finished_at = ?
			WHERE id = ? AND state = ?`,
			state, errText, hint, consoleTail, resultJSON, finished, id, OpStateRunning)
		if err != nil {
			return fmt.Errorf("finish operation %s: %w", id, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("finish operation %s: %w", id, err)
		}
		if n == 0 {
			return fmt.Errorf("finish operation: %w", tx.opStateErr(ctx, id))
		}
		// Both operation states are also stage states.
		if _, err := tx.q.ExecContext(ctx, `UPDATE stages SET state = ?, finished_at = ?,
			error = ? WHERE op_id = ? AND state = ?`,
			state, finished, errText, id, StageStateRunning); err != nil {
			return fmt.Errorf("finish operation %s: stages: %w", id, err)
		}
		return nil
	})
}

// FailDanglingOperations marks every operation and stage still running as
// failed with DanglingOpError and returns how many operations it failed.
// A starting daemon calls it before accepting requests: nothing can still
// be working on them, because the process that was died with the daemon.
func (s *Store) FailDanglingOperations(ctx context.Context) (int, error) {
	var failed int
	err := s.WithTx(ctx, func(tx *Store) error {
		finished := formatTime(now())
		if _, err := tx.q.ExecContext(ctx, `UPDATE stages SET state = ?, finished_at = ?,
			error = ? WHERE state = ?`,
			StageStateFailed, finished, DanglingOpError, StageStateRunning); err != nil {
			return fmt.Errorf("fail dangling stages: %w", err)
		}
		res, err := tx.q.ExecContext(ctx, `UPDATE operations SET state = ?, finished_at = ?,
			error = ? WHERE state = ?`,
			OpStateFailed, finished, DanglingOpError, OpStateRunning)
		if err != nil {
			return fmt.Errorf("fail dangling operations: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("fail dangling operations: %w", err)
		}
		failed = int(n)
		return nil
	})
	return failed, err
}

// PruneOperations deletes finished operations (and their stages) created
// before cutoff and returns how many it deleted, so the history does not
// grow without bound. Running operations are never pruned.
func (s *Store) PruneOperations(ctx context.Context, cutoff time.Time) (int, error) {
	res, err := s.q.ExecContext(ctx, `DELETE FROM operations WHERE state != ? AND created_at < ?`,
		OpStateRunning, formatTime(cutoff))
	if err != nil {
		return 0, fmt.Errorf("prune operations: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune operations: %w", err)
	}
	return int(n), nil
}
