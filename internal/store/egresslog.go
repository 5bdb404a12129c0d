package store

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// EgressRecord is one row of a VM's egress connection log.
type EgressRecord struct {
	ID         int64     `json:"id"`
	VMID       string    `json:"vm_id"`
	Time       time.Time `json:"time"`
	Session    string    `json:"session"`
	PID        int       `json:"pid"`
	Process    string    `json:"process"`
	Proto      string    `json:"proto"`
	Name       string    `json:"name"`
	Addr       string    `json:"addr"`
	Port       int       `json:"port"`
	Decision   string    `json:"decision"`
	Rule       string    `json:"rule"`
	Policy     string    `json:"policy"`
	Note       string    `json:"note"`
	BytesUp    int64     `json:"bytes_up"`
	BytesDown  int64     `json:"bytes_down"`
	DurationMS int64     `json:"duration_ms"`
}

// EgressFilter selects log rows.
type EgressFilter struct {
	// Denied keeps rows whose decision is not "allow".
	Denied bool
	// After keeps rows with a larger ID.
	After int64
	// Limit keeps the newest Limit rows (0: all).
	Limit int
}

const egressColumns = `id, vm_id, time, session, pid, process, proto, name, addr,
	port, decision, rule, policy, note, bytes_up, bytes_down, duration_ms`

// InsertEgressRecord appends rec to its VM's log and sets rec.ID. A VM
// that no longer exists is ErrNotFound. The log is capped by
// PruneEgressLog, which the caller runs every so often.
func (s *Store) InsertEgressRecord(ctx context.Context, rec *EgressRecord) error {
	if rec.VMID == "" || rec.Decision == "" {
		return fmt.Errorf("insert egress record: vm id and decision are required: %w", ErrInvalid)
	}
	res, err := s.q.ExecContext(ctx, `INSERT INTO egress_log (vm_id, time, session,
		pid, process, proto, name, addr, port, decision, rule, policy, note,
		bytes_up, bytes_down, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		rec.VMID, formatTime(rec.Time), rec.Session, rec.PID, rec.Process, rec.Proto,
		rec.Name, rec.Addr, rec.Port, rec.Decision, rec.Rule, rec.Policy, rec.Note,
		rec.BytesUp, rec.BytesDown, rec.DurationMS)
	if isForeignKey(err) {
		return fmt.Errorf("insert egress record: vm %s: %w", rec.VMID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("insert egress record: %w", err)
	}
	rec.ID, err = res.LastInsertId()
	return err
}

// PruneEgressLog deletes VM vmID's oldest rows beyond the newest keep,
// and returns how many went.
func (s *Store) PruneEgressLog(ctx context.Context, vmID string, keep int) (int64, error) {
	if keep < 0 {
		keep = 0
	}
	// The subquery walks the (vm_id, id) index from the newest row.
	res, err := s.q.ExecContext(ctx, `DELETE FROM egress_log WHERE vm_id = ?1 AND id <=
		(SELECT id FROM egress_log WHERE vm_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)`, vmID, keep)
	if err != nil {
		return 0, fmt.Errorf("prune egress log of %s: %w", vmID, err)
	}
	return res.RowsAffected()
}

// ListEgressLog returns VM vmID's rows that f selects, oldest first.
func (s *Store) ListEgressLog(ctx context.Context, vmID string, f EgressFilter) ([]EgressRecord, error) {
	q := `SELECT ` + egressColumns + ` FROM egress_log WHERE vm_id = ? AND id > ?`
	args := []any{vmID, f.After}
	if f.Denied {
		q += ` AND decision != 'allow'`
	}
	q += ` ORDER BY id DESC`
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	rows, err := s.q.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list egress log of %s: %w", vmID, err)
	}
	defer rows.Close()
	var out []EgressRecord
	for rows.Next() {
		var r EgressRecord
		var t string
		if err := rows.Scan(&r.ID, &r.VMID, &t, &r.Session, &r.PID, &r.Process, &r.Proto,
			&r.Name, &r.Addr, &r.Port, &r.Decision, &r.Rule, &r.Policy, &r.Note,
			&r.BytesUp, &r.BytesDown, &r.DurationMS); err != nil {
			return nil, fmt.Errorf("list egress log of %s: %w", vmID, err)
		}
		if r.Time, err = parseTime(t); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list egress log of %s: %w", vmID, err)
	}
	slices.Reverse(out)
	return out, nil
}

// SweepEgressLog deletes rows of VMs that no longer exist (the foreign
// key removes them with their VM; this catches rows written with foreign
// keys off, by hand or by an old tool) and returns how many went.
func (s *Store) SweepEgressLog(ctx context.Context) (int64, error) {
	res, err := s.q.ExecContext(ctx, `DELETE FROM egress_log WHERE vm_id NOT IN (SELECT id FROM vms)`)
	if err != nil {
		return 0, fmt.Errorf("sweep egress log: %w", err)
	}
	return res.RowsAffected()
}
