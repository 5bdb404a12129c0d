package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// vmmUserAttempts bounds retries when another writer takes the uid we
// picked between the read and the insert.
const vmmUserAttempts = 8

// AllocateVMMUser returns the uid VM owner's VMM runs as, from the
// inclusive range [first, last]: the one it already holds, or else the
// lowest one that no other owner holds and busy does not report (busy
// says whether some process on the host runs as that uid already, for
// example a VMM of another banger instance given the same range). A uid
// held from an older, different range is given up for one in the new
// range. A full range is ErrExhausted.
func (s *Store) AllocateVMMUser(ctx context.Context, owner string, first, last uint32, busy func(uint32) bool) (uint32, error) {
	if owner == "" || first == 0 || first > last {
		return 0, fmt.Errorf("allocate vmm user for %q in %d-%d: %w", owner, first, last, ErrInvalid)
	}
	if busy == nil {
		busy = func(uint32) bool { return false }
	}
	for range vmmUserAttempts {
		uid, err := s.VMMUser(ctx, owner)
		switch {
		case err == nil && uid >= first && uid <= last:
			return uid, nil
		case err == nil:
			if err := s.ReleaseVMMUser(ctx, owner); err != nil {
				return 0, err
			}
		case !errors.Is(err, ErrNotFound):
			return 0, err
		}
		held, err := s.heldVMMUsers(ctx, first, last)
		if err != nil {
			return 0, fmt.Errorf("allocate vmm user for %s: %w", owner, err)
		}
		pick := uint32(0)
		for id := first; ; id++ {
			if !held[id] && !busy(id) {
				pick = id
				break
			}
			if id == last {
				break
			}
		}
		if pick == 0 {
			return 0, fmt.Errorf("allocate vmm user for %s: every uid of %d-%d is taken: %w", owner, first, last, ErrExhausted)
		}
		_, err = s.q.ExecContext(ctx, `INSERT INTO vmm_users (owner, uid, created_at) VALUES (?, ?, ?)`,
			owner, int64(pick), formatTime(now()))
		switch {
		case err == nil:
			return pick, nil
		case isUnique(err, "vmm_users.uid"), isUnique(err, "vmm_users.owner"):
			continue
		default:
			return 0, fmt.Errorf("allocate vmm user for %s: %w", owner, err)
		}
	}
	return 0, fmt.Errorf("allocate vmm user for %s: lost %d races for a uid: %w", owner, vmmUserAttempts, ErrConflict)
}

func (s *Store) heldVMMUsers(ctx context.Context, first, last uint32) (map[uint32]bool, error) {
	rows, err := s.q.QueryContext(ctx, `SELECT uid FROM vmm_users WHERE uid BETWEEN ? AND ?`, int64(first), int64(last))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	held := map[uint32]bool{}
	for rows.Next() {
		var uid int64
		if err := rows.Scan(&uid); err != nil {
			return nil, err
		}
		held[uint32(uid)] = true
	}
	return held, rows.Err()
}

// VMMUser returns the uid owner holds, or ErrNotFound.
func (s *Store) VMMUser(ctx context.Context, owner string) (uint32, error) {
	var uid int64
	err := s.q.QueryRowContext(ctx, `SELECT uid FROM vmm_users WHERE owner = ?`, owner).Scan(&uid)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("vmm user of %s: %w", owner, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("vmm user of %s: %w", owner, err)
	}
	return uint32(uid), nil
}

// ReleaseVMMUser gives owner's uid back; releasing none is not an error.
// Deleting a VM's row releases its uid by itself (trigger).
func (s *Store) ReleaseVMMUser(ctx context.Context, owner string) error {
	if _, err := s.q.ExecContext(ctx, `DELETE FROM vmm_users WHERE owner = ?`, owner); err != nil {
		return fmt.Errorf("release vmm user of %s: %w", owner, err)
	}
	return nil
}

// PruneVMMUsers releases the uids of owners that are no VM: throwaway
// VMs of a daemon that died before releasing theirs. Call it only when
// no throwaway VM of this daemon can be running (at start).
func (s *Store) PruneVMMUsers(ctx context.Context) (int, error) {
	res, err := s.q.ExecContext(ctx, `DELETE FROM vmm_users WHERE owner NOT IN (SELECT id FROM vms)`)
	if err != nil {
		return 0, fmt.Errorf("prune vmm users: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
