// Package store keeps the daemon's state in one SQLite file: images, VMs,
// the host ports forwarded to them, and operations with their stages.
//
// The daemon writes from many goroutines at once (one per operation plus
// reconcile), so the database runs in WAL mode (readers never block the
// writer) with a busy timeout (writers queue instead of failing), and every
// explicit transaction starts with BEGIN IMMEDIATE so a read-then-write
// transaction cannot fail halfway with SQLITE_BUSY when another writer got
// in between its read and its write.
//
// All SQL lives in this package; callers see plain structs and Err*
// sentinels.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

var (
	// ErrNotFound means the image, VM, operation or stage does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means a unique key (a name, an ID, the default image) is
	// already taken.
	ErrExists = errors.New("already exists")
	// ErrConflict means the row exists but its state forbids the change,
	// for example finishing an operation twice, or no free host port was
	// found.
	ErrConflict = errors.New("conflict")
	// ErrInUse means an image cannot be deleted because VMs still use it.
	ErrInUse = errors.New("in use")
	// ErrInvalid means an argument was rejected before touching the database.
	ErrInvalid = errors.New("invalid argument")
	// ErrSchemaTooNew means the database was migrated by a newer banger;
	// running an older binary against it could corrupt state.
	ErrSchemaTooNew = errors.New("database schema is newer than this banger")
)

// busyTimeoutMillis is how long a connection waits for another writer
// before giving up with SQLITE_BUSY. Writes here are tiny, so hitting it
// means something is stuck, not merely busy.
const busyTimeoutMillis = 5000

// timeLayout is RFC 3339 with a fixed-width nanosecond fraction. Stored
// times are always UTC, and fixed width makes ORDER BY on the text column
// agree with time order (time.RFC3339Nano trims trailing zeros, which
// breaks that). time.Parse(time.RFC3339Nano, ...) reads it back.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// idAttempts bounds how often a generated ID is redrawn after it collided
// with an existing row; with 32 random bits a second collision in a row
// means something other than chance.
const idAttempts = 4

// querier is what *sql.DB and *sql.Tx have in common, so every method works
// the same inside and outside WithTx.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Store is the daemon's state database. A Store returned by Open is safe
// for concurrent use. A Store handed to a WithTx callback is bound to that
// transaction: use it only inside the callback and only from its goroutine.
type Store struct {
	db *sql.DB
	q  querier
	// depth is 0 outside a transaction, 1 inside WithTx, and n+1 inside a
	// WithTx nested n deep (implemented with savepoints).
	depth int
}

// Open opens (creating if needed) the database at path, brings its schema
// up to date and returns the Store. The file is mode 0600 because it holds
// paths, console output and errors that other local users have no business
// reading; SQLite gives the -wal and -shm files the same mode.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("open store: empty path: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// Create the file ourselves so SQLite never creates it with the
	// umask-derived 0644, and tighten a file an older build left wider.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := os.Chmod(abs, 0o600); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	if err := migrate(ctx, db); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	return &Store{db: db, q: db}, nil
}

// dsn builds the connection string. The pragmas go in the DSN rather than
// through one Exec after Open because database/sql pools connections and
// each new connection must get them; foreign_keys in particular is
// per-connection and silently off otherwise. The path is a file: URI so a
// '?' or '#' in a directory name cannot be mistaken for the query.
func dsn(absPath string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMillis))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	return "file:" + (&url.URL{Path: absPath}).EscapedPath() + "?" + q.Encode()
}

// Close closes the database. Calling it on a transaction-bound Store is a
// bug and returns an error instead of closing the shared pool.
func (s *Store) Close() error {
	if s.depth > 0 {
		return errors.New("close store: called inside a transaction")
	}
	return s.db.Close()
}

// WithTx runs fn in one transaction and commits if fn returns nil. Nested
// calls (a method that uses WithTx internally, called from inside a WithTx
// callback) become savepoints, so an inner failure rolls back only the
// inner work and the outer callback decides what to do with the error.
func (s *Store) WithTx(ctx context.Context, fn func(tx *Store) error) (err error) {
	if s.depth > 0 {
		return s.withSavepoint(ctx, fn)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
	}()
	if err := fn(&Store{db: s.db, q: tx, depth: 1}); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

func (s *Store) withSavepoint(ctx context.Context, fn func(tx *Store) error) (err error) {
	name := fmt.Sprintf("sp%d", s.depth)
	if _, err := s.q.ExecContext(ctx, "SAVEPOINT "+name); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	// ROLLBACK TO keeps the savepoint open; RELEASE closes it either way.
	undo := func() error {
		_, rbErr := s.q.ExecContext(context.WithoutCancel(ctx), "ROLLBACK TO "+name+"; RELEASE "+name)
		return rbErr
	}
	defer func() {
		if p := recover(); p != nil {
			_ = undo()
			panic(p)
		}
	}()
	if err := fn(&Store{db: s.db, q: s.q, depth: s.depth + 1}); err != nil {
		if rbErr := undo(); rbErr != nil {
			return errors.Join(err, fmt.Errorf("rollback to savepoint: %w", rbErr))
		}
		return err
	}
	if _, err := s.q.ExecContext(ctx, "RELEASE "+name); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// NewID returns 8 random lowercase hex characters, the form of VM IDs.
// Create* methods call it when given an empty ID; callers that need the ID
// before inserting (to name a VM's directory, say) call it themselves.
func NewID() string {
	var b [4]byte
	// crypto/rand.Read never returns an error (it crashes the program
	// instead when the kernel's generator fails).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// insertWithID runs insert, redrawing *id and retrying when the ID was
// generated here and collided with an existing row. A caller-chosen ID that
// collides is the caller's problem and is reported as is.
func insertWithID(id *string, idColumn string, insert func() error) error {
	generated := *id == ""
	for attempt := 1; ; attempt++ {
		if generated {
			*id = NewID()
		}
		err := insert()
		if err != nil && generated && attempt < idAttempts && isUnique(err, idColumn) {
			continue
		}
		if err != nil && generated {
			*id = ""
		}
		return err
	}
}

func now() time.Time { return time.Now().UTC() }

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func formatTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return formatTime(*t)
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse stored time %q: %w", s, err)
	}
	return t.UTC(), nil
}

func parseTimePtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// rowScanner is what *sql.Row and *sql.Rows have in common.
type rowScanner interface {
	Scan(dest ...any) error
}

func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation on
// column, written "table.column" as SQLite names it in the message. The
// message is the only place SQLite says which constraint failed.
func isUnique(err error, column string) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return strings.Contains(err.Error(), column)
	}
	return false
}

// isForeignKey reports whether err is a foreign key violation. SQLite does
// not say which key, so callers only use it where one key can fail. An ON
// DELETE RESTRICT action is reported as SQLITE_CONSTRAINT_TRIGGER, not
// _FOREIGNKEY, with the same message, hence the second case.
func isForeignKey(err error) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return true
	case sqlite3.SQLITE_CONSTRAINT_TRIGGER:
		return strings.Contains(err.Error(), "FOREIGN KEY constraint failed")
	}
	return false
}

// affectedOne turns "UPDATE/DELETE matched nothing" into notFound.
func affectedOne(res sql.Result, notFound error) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return notFound
	}
	return nil
}
