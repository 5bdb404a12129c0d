package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// newTestStore opens a fresh database file in a temporary directory.
func newTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// mustImage registers a ready image named name.
func mustImage(t *testing.T, s *Store, name string) Image {
	t.Helper()
	img := Image{Name: name, Dir: "/images/" + name, Fingerprint: "fp-" + name}
	if err := s.CreateImage(context.Background(), &img); err != nil {
		t.Fatalf("CreateImage(%s): %v", name, err)
	}
	return img
}

// mustVM creates a VM named name booting image imageID.
func mustVM(t *testing.T, s *Store, name, imageID string) VM {
	t.Helper()
	vm := VM{Name: name, ImageID: imageID, CPUs: 2, MemoryMiB: 1024, WorkDiskBytes: 8 << 30}
	if err := s.CreateVM(context.Background(), &vm); err != nil {
		t.Fatalf("CreateVM(%s): %v", name, err)
	}
	return vm
}

func TestOpenConfiguresEveryConnection(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)

	// Hold several connections at once so the pool has to open new ones;
	// each must carry the DSN pragmas, not just the first.
	const n = 4
	for i := range n {
		conn, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for _, tc := range []struct{ pragma, want string }{
			{"journal_mode", "wal"},
			{"foreign_keys", "1"},
			{"busy_timeout", "5000"},
		} {
			var got string
			if err := conn.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
				t.Fatalf("conn %d: PRAGMA %s: %v", i, tc.pragma, err)
			}
			if got != tc.want {
				t.Errorf("conn %d: PRAGMA %s = %q, want %q", i, tc.pragma, got, tc.want)
			}
		}
	}
}

func TestOpenFileMode(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	// A file left world-readable by someone else is tightened, too.
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustImage(t, s, "debian") // forces the -wal file into existence

	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("%s: mode %o, want 600", filepath.Base(p), got)
		}
	}
}

func TestOpenOddPath(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "a?b#c d%20")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	mustImage(t, s, "debian")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The data must be in the file we named, not in one SQLite derived
	// from a mis-parsed URI.
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.GetImage(ctx, "debian"); err != nil {
		t.Fatalf("GetImage after reopen: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		path string
		want error
	}{
		{"empty path", "", ErrInvalid},
		{"missing directory", filepath.Join(t.TempDir(), "no", "such", "banger.db"), os.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(ctx, tc.path)
			if !errors.Is(err, tc.want) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Open(%q) = %v, want %v", tc.path, err, tc.want)
			}
		})
	}
}

func schemaRows(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestReopenIsIdempotent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	img := mustImage(t, s, "debian")
	mustVM(t, s, "dev", img.ID)
	s.Close()

	for range 3 {
		s, err = Open(ctx, path)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		if got := schemaRows(t, s); got != len(migrations) {
			t.Errorf("schema_migrations has %d rows, want %d", got, len(migrations))
		}
		if _, err := s.GetVM(ctx, "dev"); err != nil {
			t.Errorf("GetVM after reopen: %v", err)
		}
		s.Close()
	}
}

// TestMigrationsApplyInOrderOnce plays a binary upgrade: a database made
// by the current binary is opened by one that knows one more migration.
func TestMigrationsApplyInOrderOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	mustImage(t, s, "debian")
	s.Close()

	saved := migrations
	t.Cleanup(func() { migrations = saved })
	// Not IF NOT EXISTS: applying it twice would fail the reopen below.
	migrations = append(append([]string(nil), saved...),
		`ALTER TABLE images ADD COLUMN arch TEXT NOT NULL DEFAULT 'amd64';
		 CREATE TABLE upgrade_probe (x INTEGER);`)

	for range 2 {
		s, err = Open(ctx, path)
		if err != nil {
			t.Fatalf("open with new migration: %v", err)
		}
		var arch string
		if err := s.db.QueryRow(`SELECT arch FROM images WHERE name = 'debian'`).Scan(&arch); err != nil {
			t.Fatalf("new column: %v", err)
		}
		if arch != "amd64" {
			t.Errorf("arch = %q", arch)
		}
		if got := schemaRows(t, s); got != len(migrations) {
			t.Errorf("schema_migrations has %d rows, want %d", got, len(migrations))
		}
		s.Close()
	}
}

func TestFailedMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	saved := migrations
	t.Cleanup(func() { migrations = saved })
	migrations = append(append([]string(nil), saved...),
		`CREATE TABLE half_done (x INTEGER); SELECT * FROM no_such_table;`)

	if s, err := Open(ctx, path); err == nil {
		s.Close()
		t.Fatal("Open succeeded with a broken migration")
	}
	migrations = saved
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("a failed migration left a table behind")
	}
}

func TestSchemaTooNew(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, '')`,
		len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(ctx, path)
	if !errors.Is(err, ErrSchemaTooNew) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
}

func TestWithTx(t *testing.T) {
	ctx := context.Background()
	errBoom := errors.New("boom")

	tests := []struct {
		name      string
		fn        func(s *Store) func(tx *Store) error
		wantErr   error
		wantNames []string // image names left afterwards
	}{
		{
			name: "commit",
			fn: func(*Store) func(*Store) error {
				return func(tx *Store) error {
					return tx.CreateImage(ctx, &Image{Name: "a", Dir: "/a"})
				}
			},
			wantNames: []string{"a"},
		},
		{
			name: "error rolls back",
			fn: func(*Store) func(*Store) error {
				return func(tx *Store) error {
					if err := tx.CreateImage(ctx, &Image{Name: "a", Dir: "/a"}); err != nil {
						return err
					}
					return errBoom
				}
			},
			wantErr: errBoom,
		},
		{
			name: "failed nested call rolls back only itself",
			fn: func(*Store) func(*Store) error {
				return func(tx *Store) error {
					if err := tx.CreateImage(ctx, &Image{Name: "a", Dir: "/a"}); err != nil {
						return err
					}
					err := tx.WithTx(ctx, func(inner *Store) error {
						if err := inner.CreateImage(ctx, &Image{Name: "b", Dir: "/b"}); err != nil {
							return err
						}
						return errBoom
					})
					if !errors.Is(err, errBoom) {
						return fmt.Errorf("nested WithTx = %v", err)
					}
					return tx.CreateImage(ctx, &Image{Name: "c", Dir: "/c"})
				}
			},
			wantNames: []string{"a", "c"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			if err := s.WithTx(ctx, tc.fn(s)); !errors.Is(err, tc.wantErr) {
				t.Fatalf("WithTx = %v, want %v", err, tc.wantErr)
			}
			imgs, err := s.ListImages(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, img := range imgs {
				names = append(names, img.Name)
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.wantNames) {
				t.Errorf("images = %v, want %v", names, tc.wantNames)
			}
		})
	}
}

func TestWithTxPanicRollsBack(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	func() {
		defer func() { _ = recover() }()
		_ = s.WithTx(ctx, func(tx *Store) error {
			if err := tx.CreateImage(ctx, &Image{Name: "a", Dir: "/a"}); err != nil {
				t.Error(err)
			}
			panic("boom")
		})
	}()
	if _, err := s.GetImage(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetImage after panic = %v, want ErrNotFound", err)
	}
	// The pool must be usable again: no connection stuck in a transaction.
	mustImage(t, s, "b")
}

// TestConcurrentWriters hammers one database from many goroutines through
// two Stores (as a daemon and a second process would): WAL, the busy
// timeout and BEGIN IMMEDIATE must turn contention into waiting, never
// into SQLITE_BUSY.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	a, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	base := mustImage(t, a, "base")
	const workers, rounds = 8, 20
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		nextPort = 20000
	)
	candidate := func() (int, error) {
		mu.Lock()
		defer mu.Unlock()
		nextPort++
		return nextPort, nil
	}
	errs := make(chan error, workers*rounds)
	for w := range workers {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for r := range rounds {
				if err := oneRound(ctx, s, w, r, base.ID, candidate); err != nil {
					errs <- fmt.Errorf("worker %d round %d: %w", w, r, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	vms, err := a.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != workers*rounds {
		t.Errorf("%d vms, want %d", len(vms), workers*rounds)
	}
	ops, err := b.ListOperations(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op.State != OpStateSucceeded || len(op.Stages) != 2 {
			t.Errorf("op %s: state %s, %d stages", op.ID, op.State, len(op.Stages))
		}
	}
}

// oneRound is roughly what a vm create does to the store.
func oneRound(ctx context.Context, s *Store, w, r int, imageID string, candidate func() (int, error)) error {
	op := Operation{Kind: OpKindVMCreate, Target: fmt.Sprintf("vm-%d-%d", w, r)}
	if err := s.CreateOperation(ctx, &op); err != nil {
		return err
	}
	st, err := s.StartStage(ctx, op.ID, "disk")
	if err != nil {
		return err
	}
	vm := VM{Name: op.Target, ImageID: imageID}
	if err := s.CreateVM(ctx, &vm); err != nil {
		return err
	}
	if _, err := s.AllocatePort(ctx, vm.ID, 22, candidate); err != nil {
		return err
	}
	if err := s.FinishStage(ctx, op.ID, st.Seq, StageStateSucceeded, "", ""); err != nil {
		return err
	}
	if _, err := s.StartStage(ctx, op.ID, "boot"); err != nil {
		return err
	}
	if err := s.SetVMState(ctx, vm.ID, VMStateRunning, ""); err != nil {
		return err
	}
	// Read, then write, in one transaction: under a deferred BEGIN this
	// fails with SQLITE_BUSY as soon as another writer commits in between.
	err = s.WithTx(ctx, func(tx *Store) error {
		cur, err := tx.GetVM(ctx, vm.ID)
		if err != nil {
			return err
		}
		cur.PID = 1000 + r
		return tx.UpdateVM(ctx, &cur)
	})
	if err != nil {
		return err
	}
	if err := s.SetDefaultImage(ctx, imageID); err != nil {
		return err
	}
	return s.FinishOperation(ctx, op.ID, OpStateSucceeded, "", "", "", `{"ok":true}`)
}

func TestTimesRoundTripInUTC(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	loc := time.FixedZone("x", 5*3600)
	created := time.Date(2025, 3, 4, 5, 6, 7, 120000000, loc)
	img := Image{Name: "a", Dir: "/a", CreatedAt: created}
	if err := s.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(created) || got.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want %v in UTC", got.CreatedAt, created)
	}
	var raw string
	if err := s.db.QueryRow(`SELECT created_at FROM images`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if want := "2025-03-04T00:06:07.120000000Z"; raw != want {
		t.Errorf("stored %q, want %q", raw, want)
	}
}
