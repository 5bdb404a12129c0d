package store

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are applied in order; migration i (0-based) brings the schema
// to version i+1. Never edit or reorder an entry that has shipped: append a
// new one. Each runs in its own transaction with foreign_keys on, and
// SQLite ignores PRAGMA foreign_keys inside a transaction, so a migration
// that rebuilds a referenced table must keep the references valid.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE images (
	id             TEXT PRIMARY KEY,
	name           TEXT NOT NULL UNIQUE,
	fingerprint    TEXT NOT NULL DEFAULT '',
	dir            TEXT NOT NULL,
	is_default     INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
	state          TEXT NOT NULL,
	suite          TEXT NOT NULL DEFAULT '',
	kernel_version TEXT NOT NULL DEFAULT '',
	size_bytes     INTEGER NOT NULL DEFAULT 0,
	created_at     TEXT NOT NULL,
	manifest       TEXT NOT NULL DEFAULT ''
);
-- At most one default image, enforced by the database rather than by
-- every code path that changes the default.
CREATE UNIQUE INDEX images_one_default ON images (is_default) WHERE is_default = 1;
CREATE INDEX images_fingerprint ON images (fingerprint);

CREATE TABLE vms (
	id              TEXT PRIMARY KEY,
	name            TEXT NOT NULL UNIQUE,
	-- RESTRICT: an image a VM boots from must not disappear under it.
	image_id        TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
	state           TEXT NOT NULL,
	cpus            INTEGER NOT NULL DEFAULT 0,
	memory_mib      INTEGER NOT NULL DEFAULT 0,
	work_disk_bytes INTEGER NOT NULL DEFAULT 0,
	egress          TEXT NOT NULL DEFAULT '',
	accel           TEXT NOT NULL DEFAULT '',
	pid             INTEGER NOT NULL DEFAULT 0,
	pid_start_time  INTEGER NOT NULL DEFAULT 0,
	dir             TEXT NOT NULL DEFAULT '',
	ssh_port        INTEGER NOT NULL DEFAULT 0,
	created_at      TEXT NOT NULL,
	updated_at      TEXT NOT NULL,
	last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX vms_image_id ON vms (image_id);

CREATE TABLE ports (
	port       INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
	vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
	guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
	proto      TEXT NOT NULL DEFAULT 'tcp'
);
CREATE INDEX ports_vm_id ON ports (vm_id);

CREATE TABLE operations (
	id           TEXT PRIMARY KEY,
	kind         TEXT NOT NULL,
	target       TEXT NOT NULL DEFAULT '',
	state        TEXT NOT NULL,
	error        TEXT NOT NULL DEFAULT '',
	hint         TEXT NOT NULL DEFAULT '',
	console_tail TEXT NOT NULL DEFAULT '',
	result_json  TEXT NOT NULL DEFAULT '',
	created_at   TEXT NOT NULL,
	finished_at  TEXT
);
CREATE INDEX operations_created_at ON operations (created_at);
-- FailDanglingOperations runs on every daemon start; keep it off a scan of
-- the whole history.
CREATE INDEX operations_running ON operations (state) WHERE state = 'running';

CREATE TABLE stages (
	op_id       TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
	seq         INTEGER NOT NULL,
	name        TEXT NOT NULL,
	state       TEXT NOT NULL,
	started_at  TEXT NOT NULL,
	finished_at TEXT,
	error       TEXT NOT NULL DEFAULT '',
	detail      TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (op_id, seq)
);
`,
	// 2: the VM's workspace (banger vm workspace prepare), as JSON.
	`ALTER TABLE vms ADD COLUMN workspace_json TEXT NOT NULL DEFAULT '';`,
	// 3: the fingerprint of the image work seed a VM's work disk was made
	// from, and the auth files copied in at its last boot (JSON array of
	// paths relative to /root; names only, never contents).
	`
ALTER TABLE vms ADD COLUMN work_seed_fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN auth_synced_json TEXT NOT NULL DEFAULT '';
`,
	// 4: image states are staged and managed ("ready" was the old name of
	// managed), and the outcome of the last `image verify`.
	`
UPDATE images SET state = 'managed' WHERE state = 'ready';
ALTER TABLE images ADD COLUMN verified_at TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN verify_error TEXT NOT NULL DEFAULT '';
`,
	// 5: which VMM runs a VM, how its NIC is attached, and the driver's
	// own per-VM state (socket paths, vsock CID; JSON the driver owns).
	`
ALTER TABLE vms ADD COLUMN vmm TEXT NOT NULL DEFAULT 'qemu';
ALTER TABLE vms ADD COLUMN net_mode TEXT NOT NULL DEFAULT 'user';
ALTER TABLE vms ADD COLUMN vmm_state_json TEXT NOT NULL DEFAULT '';
`,
	// 6: tap-mode network leases: the guest address, TAP device and MAC
	// of each tap VM. UNIQUE keeps two VMs off one address or device.
	`
CREATE TABLE leases (
	vm_id      TEXT PRIMARY KEY REFERENCES vms (id) ON DELETE CASCADE,
	addr       TEXT NOT NULL UNIQUE,
	tap        TEXT NOT NULL UNIQUE,
	mac        TEXT NOT NULL,
	created_at TEXT NOT NULL
);
`,
	// 7: the uid (and same-numbered gid) each VM's VMM runs as when the
	// daemon is root. owner is a VM id, or the id of a throwaway VM
	// (image verify, derive) that has no vms row, hence no foreign key;
	// the trigger releases a VM's uid with its row.
	`
CREATE TABLE vmm_users (
	owner      TEXT PRIMARY KEY,
	uid        INTEGER NOT NULL UNIQUE CHECK (uid > 0),
	created_at TEXT NOT NULL
);
CREATE TRIGGER vms_release_vmm_user AFTER DELETE ON vms
BEGIN
	DELETE FROM vmm_users WHERE owner = OLD.id;
END;
`,
	// 8: egress gateway: a VM's named policy, its own allow and deny
	// patterns (JSON arrays), its credentials mode, and the connection
	// log (capped per VM by InsertEgressRecord; rows go with their VM).
	`
ALTER TABLE vms ADD COLUMN egress_policy TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN egress_allow TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN egress_deny TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN credentials TEXT NOT NULL DEFAULT '';
CREATE TABLE egress_log (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
	time        TEXT NOT NULL,
	session     TEXT NOT NULL DEFAULT '',
	pid         INTEGER NOT NULL DEFAULT 0,
	process     TEXT NOT NULL DEFAULT '',
	proto       TEXT NOT NULL DEFAULT '',
	name        TEXT NOT NULL DEFAULT '',
	addr        TEXT NOT NULL DEFAULT '',
	port        INTEGER NOT NULL DEFAULT 0,
	decision    TEXT NOT NULL,
	rule        TEXT NOT NULL DEFAULT '',
	policy      TEXT NOT NULL DEFAULT '',
	note        TEXT NOT NULL DEFAULT '',
	bytes_up    INTEGER NOT NULL DEFAULT 0,
	bytes_down  INTEGER NOT NULL DEFAULT 0,
	duration_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX egress_log_vm ON egress_log (vm_id, id);
`,
	// 9: snapshots (a VM's memory, device state and disks at one
	// instant), the snapshot whose read-only layers a VM's disks stand
	// on, and an image's ready snapshot. The references are '' for none,
	// so they carry no foreign key: DeleteSnapshot checks them in its
	// transaction instead. image_id is RESTRICT: a snapshot's root layer
	// stands on the image's rootfs.
	`
CREATE TABLE snapshots (
	id              TEXT PRIMARY KEY,
	name            TEXT NOT NULL UNIQUE,
	kind            TEXT NOT NULL,
	state           TEXT NOT NULL,
	vm_id           TEXT NOT NULL DEFAULT '',
	vm_name         TEXT NOT NULL DEFAULT '',
	image_id        TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
	parent_id       TEXT NOT NULL DEFAULT '',
	vmm             TEXT NOT NULL DEFAULT '',
	compat          TEXT NOT NULL DEFAULT '',
	accel           TEXT NOT NULL DEFAULT '',
	cpus            INTEGER NOT NULL DEFAULT 0,
	memory_mib      INTEGER NOT NULL DEFAULT 0,
	work_disk_bytes INTEGER NOT NULL DEFAULT 0,
	net_mode        TEXT NOT NULL DEFAULT '',
	dir             TEXT NOT NULL DEFAULT '',
	size_bytes      INTEGER NOT NULL DEFAULT 0,
	created_at      TEXT NOT NULL,
	root_format     TEXT NOT NULL DEFAULT '',
	work_format     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX snapshots_image_id ON snapshots (image_id);
CREATE INDEX snapshots_parent_id ON snapshots (parent_id);
ALTER TABLE vms ADD COLUMN snapshot_id TEXT NOT NULL DEFAULT '';
CREATE INDEX vms_snapshot_id ON vms (snapshot_id);
ALTER TABLE images ADD COLUMN ready_snapshot_id TEXT NOT NULL DEFAULT '';
`,
}

// migrate brings db to the newest schema this binary knows. It is safe to
// run from two processes at once: each migration re-checks the version
// inside its own write transaction.
func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	applied_at TEXT NOT NULL
)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	current, err := schemaVersion(ctx, db)
	if err != nil {
		return err
	}
	if current > len(migrations) {
		return fmt.Errorf("schema version %d, this binary knows up to %d (upgrade banger): %w",
			current, len(migrations), ErrSchemaTooNew)
	}
	for v := current + 1; v <= len(migrations); v++ {
		if err := applyMigration(ctx, db, v); err != nil {
			return err
		}
	}
	return nil
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func applyMigration(ctx context.Context, db *sql.DB, version int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate to version %d: %w", version, err)
	}
	defer func() { _ = tx.Rollback() }()

	// Another process may have migrated while we waited for the lock.
	current, err := schemaVersion(ctx, tx)
	if err != nil {
		return err
	}
	if current >= version {
		return nil
	}
	if _, err := tx.ExecContext(ctx, migrations[version-1]); err != nil {
		return fmt.Errorf("migrate to version %d: %w", version, err)
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
		version, formatTime(now())); err != nil {
		return fmt.Errorf("record schema version %d: %w", version, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate to version %d: commit: %w", version, err)
	}
	return nil
}
