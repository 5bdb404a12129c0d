package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

const vmColumns = `id, name, image_id, state, cpus, memory_mib, work_disk_bytes,
	egress, accel, pid, pid_start_time, dir, ssh_port, created_at, updated_at,
	last_error, workspace_json, work_seed_fingerprint, auth_synced_json,
	vmm, net_mode, vmm_state_json, egress_policy, egress_allow, egress_deny,
	credentials, snapshot_id`

var vmStates = []string{VMStateCreating, VMStateRunning, VMStateStopping, VMStateStopped, VMStateError, VMStateParked}

func scanVM(r rowScanner) (VM, error) {
	var vm VM
	var created, updated string
	// SQLite integers are signed; the start time round-trips bit for bit
	// through int64 and real values (clock ticks since boot) are far below
	// 2^63 anyway.
	var startTime int64
	var allow, deny string
	if err := r.Scan(&vm.ID, &vm.Name, &vm.ImageID, &vm.State, &vm.CPUs,
		&vm.MemoryMiB, &vm.WorkDiskBytes, &vm.Egress, &vm.Accel, &vm.PID,
		&startTime, &vm.Dir, &vm.SSHPort, &created, &updated,
		&vm.LastError, &vm.WorkspaceJSON, &vm.WorkSeedFingerprint, &vm.AuthSyncedJSON,
		&vm.VMM, &vm.NetMode, &vm.VMMStateJSON, &vm.EgressPolicy, &allow, &deny,
		&vm.Credentials, &vm.SnapshotID); err != nil {
		return VM{}, err
	}
	var err error
	if vm.EgressAllow, err = decodeList(allow); err != nil {
		return VM{}, fmt.Errorf("vm %s egress_allow: %w", vm.ID, err)
	}
	if vm.EgressDeny, err = decodeList(deny); err != nil {
		return VM{}, fmt.Errorf("vm %s egress_deny: %w", vm.ID, err)
	}
	vm.PIDStartTime = uint64(startTime)
	if vm.CreatedAt, err = parseTime(created); err != nil {
		return VM{}, err
	}
	if vm.UpdatedAt, err = parseTime(updated); err != nil {
		return VM{}, err
	}
	return vm, nil
}

func validateVM(vm *VM) error {
	if vm.Name == "" {
		return fmt.Errorf("vm name is required: %w", ErrInvalid)
	}
	if vm.ImageID == "" {
		return fmt.Errorf("vm %q: image id is required: %w", vm.Name, ErrInvalid)
	}
	if !slices.Contains(vmStates, vm.State) {
		return fmt.Errorf("vm %q: unknown state %q: %w", vm.Name, vm.State, ErrInvalid)
	}
	return nil
}

// vmWriteErr maps constraint failures of an insert or update of vm. The
// only foreign key on vms is image_id.
func vmWriteErr(err error, vm *VM) error {
	switch {
	case isUnique(err, "vms.name"):
		return fmt.Errorf("vm %q: %w", vm.Name, ErrExists)
	case isUnique(err, "vms.id"):
		return fmt.Errorf("vm id %s: %w", vm.ID, ErrExists)
	case isForeignKey(err):
		return fmt.Errorf("vm %q: image %s: %w", vm.Name, vm.ImageID, ErrNotFound)
	}
	return err
}

// CreateVM inserts vm. An empty ID is generated (NewID), an empty State
// becomes creating, a zero CreatedAt becomes now and UpdatedAt is set to
// now; vm is updated in place. A taken name is ErrExists; an unknown image is ErrNotFound.
func (s *Store) CreateVM(ctx context.Context, vm *VM) error {
	if vm.State == "" {
		vm.State = VMStateCreating
	}
	if vm.VMM == "" {
		vm.VMM = "qemu"
	}
	if vm.NetMode == "" {
		vm.NetMode = "user"
	}
	if err := validateVM(vm); err != nil {
		return fmt.Errorf("create vm: %w", err)
	}
	vm.UpdatedAt = now()
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = vm.UpdatedAt
	}
	vm.CreatedAt = vm.CreatedAt.UTC()
	err := insertWithID(&vm.ID, "vms.id", func() error {
		_, err := s.q.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			vm.ID, vm.Name, vm.ImageID, vm.State, vm.CPUs, vm.MemoryMiB,
			vm.WorkDiskBytes, vm.Egress, vm.Accel, vm.PID, int64(vm.PIDStartTime),
			vm.Dir, vm.SSHPort, formatTime(vm.CreatedAt), formatTime(vm.UpdatedAt),
			vm.LastError, vm.WorkspaceJSON, vm.WorkSeedFingerprint, vm.AuthSyncedJSON,
			vm.VMM, vm.NetMode, vm.VMMStateJSON, vm.EgressPolicy, encodeList(vm.EgressAllow),
			encodeList(vm.EgressDeny), vm.Credentials, vm.SnapshotID)
		return err
	})
	if err != nil {
		return fmt.Errorf("create vm: %w", vmWriteErr(err, vm))
	}
	return nil
}

// GetVM finds a VM by ID or, failing that, by name; an exact ID match wins.
func (s *Store) GetVM(ctx context.Context, idOrName string) (VM, error) {
	vm, err := scanVM(s.q.QueryRowContext(ctx, `SELECT `+vmColumns+`
		FROM vms WHERE id = ?1 OR name = ?1
		ORDER BY id = ?1 DESC LIMIT 1`, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %q: %w", idOrName, ErrNotFound)
	}
	if err != nil {
		return VM{}, fmt.Errorf("get vm %q: %w", idOrName, err)
	}
	return vm, nil
}

// ListVMs returns all VMs, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created_at, name`)
}

// VMsUsingImage returns the VMs that boot from image imageID, oldest first.
func (s *Store) VMsUsingImage(ctx context.Context, imageID string) ([]VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE image_id = ?
		ORDER BY created_at, name`, imageID)
}

func (s *Store) queryVMs(ctx context.Context, query string, args ...any) ([]VM, error) {
	rows, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("list vms: %w", err)
		}
		out = append(out, vm)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return out, nil
}

// UpdateVM writes every field of vm except ID and CreatedAt, and sets
// vm.UpdatedAt to now. It overwrites concurrent changes to the same row, so
// prefer SetVMState when only the state changes.
func (s *Store) UpdateVM(ctx context.Context, vm *VM) error {
	if err := validateVM(vm); err != nil {
		return fmt.Errorf("update vm: %w", err)
	}
	updated := now()
	res, err := s.q.ExecContext(ctx, `UPDATE vms SET name = ?, image_id = ?,
		state = ?, cpus = ?, memory_mib = ?, work_disk_bytes = ?, egress = ?,
		accel = ?, pid = ?, pid_start_time = ?, dir = ?, ssh_port = ?,
		updated_at = ?, last_error = ?, work_seed_fingerprint = ?,
		auth_synced_json = ?, vmm = ?, net_mode = ?, vmm_state_json = ?,
		snapshot_id = ?
		WHERE id = ?`,
		vm.Name, vm.ImageID, vm.State, vm.CPUs, vm.MemoryMiB, vm.WorkDiskBytes,
		vm.Egress, vm.Accel, vm.PID, int64(vm.PIDStartTime), vm.Dir, vm.SSHPort,
		formatTime(updated), vm.LastError, vm.WorkSeedFingerprint, vm.AuthSyncedJSON,
		vm.VMM, vm.NetMode, vm.VMMStateJSON, vm.SnapshotID, vm.ID)
	if err != nil {
		return fmt.Errorf("update vm: %w", vmWriteErr(err, vm))
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("update vm %s: %w", vm.ID, err)
	}
	vm.UpdatedAt = updated
	return nil
}

// SetVMState sets the state and last error of VM id. lastError replaces
// the stored one, so a transition to a healthy state passes "" to clear it.
func (s *Store) SetVMState(ctx context.Context, id, state, lastError string) error {
	if !slices.Contains(vmStates, state) {
		return fmt.Errorf("set vm %s state: unknown state %q: %w", id, state, ErrInvalid)
	}
	// A stopped VM has no VMM process: forget its pid, or `vm show`
	// keeps naming a process that is gone (or, after pid reuse, someone
	// else's). An error may leave the process alive (a stop that
	// failed), so its pid stays for the next stop to find.
	res, err := s.q.ExecContext(ctx,
		`UPDATE vms SET state = ?, last_error = ?, updated_at = ?,
		 pid = CASE WHEN ? = 'stopped' THEN 0 ELSE pid END,
		 pid_start_time = CASE WHEN ? = 'stopped' THEN 0 ELSE pid_start_time END
		 WHERE id = ?`,
		state, lastError, formatTime(now()), state, state, id)
	if err != nil {
		return fmt.Errorf("set vm %s state: %w", id, err)
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("set vm %s state: %w", id, err)
	}
	return nil
}

// SetVMWorkspace records the JSON description of VM id's workspace
// ("" for none). UpdateVM never writes it, so a concurrent lifecycle
// change cannot undo a prepare.
func (s *Store) SetVMWorkspace(ctx context.Context, id, workspaceJSON string) error {
	res, err := s.q.ExecContext(ctx,
		`UPDATE vms SET workspace_json = ?, updated_at = ? WHERE id = ?`,
		workspaceJSON, formatTime(now()), id)
	if err != nil {
		return fmt.Errorf("set vm %s workspace: %w", id, err)
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("set vm %s workspace: %w", id, err)
	}
	return nil
}

// SetVMEgress replaces VM id's own egress allow and deny patterns.
// UpdateVM never writes them, so a lifecycle change running at the same
// time cannot undo a live policy change.
func (s *Store) SetVMEgress(ctx context.Context, id string, allow, deny []string) error {
	res, err := s.q.ExecContext(ctx,
		`UPDATE vms SET egress_allow = ?, egress_deny = ?, updated_at = ? WHERE id = ?`,
		encodeList(allow), encodeList(deny), formatTime(now()), id)
	if err != nil {
		return fmt.Errorf("set vm %s egress: %w", id, err)
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("set vm %s egress: %w", id, err)
	}
	return nil
}

// encodeList stores a string list as a JSON array; empty is "".
func encodeList(l []string) string {
	if len(l) == 0 {
		return ""
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func decodeList(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var l []string
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, err
	}
	return l, nil
}

// DeleteVM removes VM id; its port reservations go with it (ON DELETE
// CASCADE).
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	res, err := s.q.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	if err := affectedOne(res, ErrNotFound); err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	return nil
}
