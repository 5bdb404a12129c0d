package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// VMStateParked is a VM whose memory and devices are saved in its
// directory and whose VMM is gone (api.VMParked).
const VMStateParked = "parked"

const snapshotColumns = `id, name, kind, state, vm_id, vm_name, image_id,
	parent_id, vmm, compat, accel, cpus, memory_mib, work_disk_bytes,
	net_mode, dir, size_bytes, created_at, root_format, work_format`

var snapshotStates = []string{SnapshotSaving, SnapshotLayering, SnapshotReady}

// snapshotKinds are api.SnapshotUser and api.SnapshotReady (the store
// does not import the wire types).
var snapshotKinds = []string{"user", "ready"}

func scanSnapshot(r rowScanner) (Snapshot, error) {
	var sn Snapshot
	var created string
	if err := r.Scan(&sn.ID, &sn.Name, &sn.Kind, &sn.State, &sn.VMID, &sn.VMName,
		&sn.ImageID, &sn.ParentID, &sn.VMM, &sn.Compat, &sn.Accel, &sn.CPUs,
		&sn.MemoryMiB, &sn.WorkDiskBytes, &sn.NetMode, &sn.Dir, &sn.SizeBytes,
		&created, &sn.RootFormat, &sn.WorkFormat); err != nil {
		return Snapshot{}, err
	}
	var err error
	if sn.CreatedAt, err = parseTime(created); err != nil {
		return Snapshot{}, err
	}
	return sn, nil
}

func validateSnapshot(sn *Snapshot) error {
	if sn.Name == "" {
		return fmt.Errorf("snapshot name is required: %w", ErrInvalid)
	}
	if sn.ImageID == "" {
		return fmt.Errorf("snapshot %q: image id is required: %w", sn.Name, ErrInvalid)
	}
	if !slices.Contains(snapshotKinds, sn.Kind) {
		return fmt.Errorf("snapshot %q: unknown kind %q: %w", sn.Name, sn.Kind, ErrInvalid)
	}
	if !slices.Contains(snapshotStates, sn.State) {
		return fmt.Errorf("snapshot %q: unknown state %q: %w", sn.Name, sn.State, ErrInvalid)
	}
	return nil
}

// CreateSnapshot inserts sn. An empty ID is generated, an empty Kind
// becomes user, an empty State saving and a zero CreatedAt now; sn is
// updated in place. A taken name is ErrExists; an unknown image is
// ErrNotFound.
func (s *Store) CreateSnapshot(ctx context.Context, sn *Snapshot) error {
	if sn.Kind == "" {
		sn.Kind = "user"
	}
	if sn.State == "" {
		sn.State = SnapshotSaving
	}
	if err := validateSnapshot(sn); err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	if sn.CreatedAt.IsZero() {
		sn.CreatedAt = now()
	}
	sn.CreatedAt = sn.CreatedAt.UTC()
	err := insertWithID(&sn.ID, "snapshots.id", func() error {
		_, err := s.q.ExecContext(ctx, `INSERT INTO snapshots (`+snapshotColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			sn.ID, sn.Name, sn.Kind, sn.State, sn.VMID, sn.VMName, sn.ImageID,
			sn.ParentID, sn.VMM, sn.Compat, sn.Accel, sn.CPUs, sn.MemoryMiB,
			sn.WorkDiskBytes, sn.NetMode, sn.Dir, sn.SizeBytes, formatTime(sn.CreatedAt),
			sn.RootFormat, sn.WorkFormat)
		return err
	})
	switch {
	case err == nil:
		return nil
	case isUnique(err, "snapshots.name"):
		return fmt.Errorf("create snapshot: snapshot %q: %w", sn.Name, ErrExists)
	case isUnique(err, "snapshots.id"):
		return fmt.Errorf("create snapshot: snapshot id %s: %w", sn.ID, ErrExists)
	case isForeignKey(err):
		return fmt.Errorf("create snapshot %q: image %s: %w", sn.Name, sn.ImageID, ErrNotFound)
	}
	return fmt.Errorf("create snapshot: %w", err)
}

// GetSnapshot finds a snapshot by ID or, failing that, by name; an exact
// ID match wins.
func (s *Store) GetSnapshot(ctx context.Context, idOrName string) (Snapshot, error) {
	sn, err := scanSnapshot(s.q.QueryRowContext(ctx, `SELECT `+snapshotColumns+`
		FROM snapshots WHERE id = ?1 OR name = ?1
		ORDER BY id = ?1 DESC LIMIT 1`, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", idOrName, ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("get snapshot %q: %w", idOrName, err)
	}
	return sn, nil
}

// ListSnapshots returns every snapshot, in any state, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	return s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots ORDER BY created_at, name`)
}

func (s *Store) querySnapshots(ctx context.Context, query string, args ...any) ([]Snapshot, error) {
	rows, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		sn, err := scanSnapshot(rows)
		if err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
		out = append(out, sn)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	return out, nil
}

// UpdateSnapshot records snapshot id's state and size: a save moves it
// from saving to layering to ready, and its size is known once its files
// are written.
func (s *Store) UpdateSnapshot(ctx context.Context, sn *Snapshot) error {
	if !slices.Contains(snapshotStates, sn.State) {
		return fmt.Errorf("update snapshot %s: unknown state %q: %w", sn.ID, sn.State, ErrInvalid)
	}
	if sn.SizeBytes < 0 {
		return fmt.Errorf("update snapshot %s: negative size %d: %w", sn.ID, sn.SizeBytes, ErrInvalid)
	}
	res, err := s.q.ExecContext(ctx, `UPDATE snapshots SET state = ?, size_bytes = ?, root_format = ?, work_format = ? WHERE id = ?`,
		sn.State, sn.SizeBytes, sn.RootFormat, sn.WorkFormat, sn.ID)
	if err != nil {
		return fmt.Errorf("update snapshot %s: %w", sn.ID, err)
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("update snapshot %s: %w", sn.ID, err)
	}
	return nil
}

// SnapshotsStandingOn returns what stands on snapshot id's layers: the
// VMs whose disks are overlays on it and the snapshots taken of such VMs
// (their layers are overlays on it too), oldest first.
func (s *Store) SnapshotsStandingOn(ctx context.Context, id string) (vms []VM, children []Snapshot, err error) {
	if id == "" {
		return nil, nil, fmt.Errorf("snapshot users: empty id: %w", ErrInvalid)
	}
	if vms, err = s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE snapshot_id = ?
		ORDER BY created_at, name`, id); err != nil {
		return nil, nil, fmt.Errorf("snapshot %s users: %w", id, err)
	}
	if children, err = s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots
		WHERE parent_id = ? ORDER BY created_at, name`, id); err != nil {
		return nil, nil, fmt.Errorf("snapshot %s users: %w", id, err)
	}
	return vms, children, nil
}

// SnapshotUsage maps the id of every snapshot something stands on to
// the names of those VMs and snapshots (VMs first, each oldest first):
// one query for a whole `snapshot list` instead of one per snapshot.
func (s *Store) SnapshotUsage(ctx context.Context) (map[string][]string, error) {
	rows, err := s.q.QueryContext(ctx, `
		SELECT snapshot_id, name FROM (
			SELECT snapshot_id, name, 0 AS k, created_at FROM vms WHERE snapshot_id != ''
			UNION ALL
			SELECT parent_id, name, 1, created_at FROM snapshots WHERE parent_id != ''
		) ORDER BY snapshot_id, k, created_at, name`)
	if err != nil {
		return nil, fmt.Errorf("snapshot usage: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var id, name string
		if err := rows.Scan(&id, &name); err != nil {
			return nil, fmt.Errorf("snapshot usage: %w", err)
		}
		out[id] = append(out[id], name)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("snapshot usage: %w", err)
	}
	return out, nil
}

// DeleteSnapshot removes snapshot id's row (not its files) and clears it
// as any image's ready snapshot, in one transaction. It fails with
// ErrInUse, naming them, while VMs or other snapshots stand on it: the
// caller flattens those first.
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	return s.WithTx(ctx, func(tx *Store) error {
		vms, children, err := tx.SnapshotsStandingOn(ctx, id)
		if err != nil {
			return fmt.Errorf("delete snapshot %s: %w", id, err)
		}
		if len(vms) > 0 || len(children) > 0 {
			return fmt.Errorf("delete snapshot %s: used by %s: %w", id, usersList(vms, children), ErrInUse)
		}
		if _, err := tx.q.ExecContext(ctx,
			`UPDATE images SET ready_snapshot_id = '' WHERE ready_snapshot_id = ?`, id); err != nil {
			return fmt.Errorf("delete snapshot %s: %w", id, err)
		}
		res, err := tx.q.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
		if err != nil {
			return fmt.Errorf("delete snapshot %s: %w", id, err)
		}
		if err := affectedOne(res, ErrNotFound); err != nil {
			return fmt.Errorf("delete snapshot %s: %w", id, err)
		}
		return nil
	})
}

// usersList names VMs and snapshots for an "in use" error:
// "vm a, b; snapshot c".
func usersList(vms []VM, snaps []Snapshot) string {
	var parts []string
	if len(vms) > 0 {
		names := make([]string, len(vms))
		for i, vm := range vms {
			names[i] = vm.Name
		}
		parts = append(parts, "vm "+strings.Join(names, ", "))
	}
	if len(snaps) > 0 {
		names := make([]string, len(snaps))
		for i, sn := range snaps {
			names[i] = sn.Name
		}
		parts = append(parts, "snapshot "+strings.Join(names, ", "))
	}
	return strings.Join(parts, "; ")
}

// SnapshotsOfImage returns the snapshots whose root layer stands on image
// imageID's rootfs, oldest first.
func (s *Store) SnapshotsOfImage(ctx context.Context, imageID string) ([]Snapshot, error) {
	return s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE image_id = ?
		ORDER BY created_at, name`, imageID)
}

// SetImageReadySnapshot records snapshotID as image imageID's ready
// snapshot ("" clears it). An unknown snapshot is ErrNotFound.
func (s *Store) SetImageReadySnapshot(ctx context.Context, imageID, snapshotID string) error {
	return s.WithTx(ctx, func(tx *Store) error {
		if snapshotID != "" {
			if _, err := tx.GetSnapshot(ctx, snapshotID); err != nil {
				return fmt.Errorf("set image %s ready snapshot: %w", imageID, err)
			}
		}
		res, err := tx.q.ExecContext(ctx, `UPDATE images SET ready_snapshot_id = ? WHERE id = ?`, snapshotID, imageID)
		if err != nil {
			return fmt.Errorf("set image %s ready snapshot: %w", imageID, err)
		}
		if err := affectedOne(res, ErrNotFound); err != nil {
			return fmt.Errorf("set image %s ready snapshot: %w", imageID, err)
		}
		return nil
	})
}
