package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

// TestOperationWatch runs an operation against a real SQLite store and
// checks that a watcher sees every stage once, in order, then the end,
// and that a late watcher replays the same from the record.
func TestOperationWatch(t *testing.T) {
	ctx := context.Background()
	ops := testOps(t)
	release := make(chan struct{})
	id, err := ops.start(ctx, "test", "x", func(ctx context.Context, stage stageFunc) (any, error) {
		if err := stage("one", func(context.Context) error { <-release; return nil }); err != nil {
			return nil, err
		}
		return nil, stage("two", func(context.Context) error { return errors.New("boom") })
	})
	if err != nil {
		t.Fatal(err)
	}
	events, cancel, err := ops.watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	close(release)
	var seen []string
	var final *api.Operation
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case ev, ok := <-events:
			if !ok {
				done = true
				break
			}
			if ev.Stage != nil {
				seen = append(seen, ev.Stage.Name+":"+ev.Stage.State)
			}
			if ev.Done {
				final = ev.Operation
			}
		case <-timeout:
			t.Fatalf("watch did not finish; saw %v", seen)
		}
	}
	want := "one:running one:succeeded two:running two:failed"
	if strings.Join(seen, " ") != want {
		t.Fatalf("stages: got %v, want %s", seen, want)
	}
	if final == nil || final.State != api.OpFailed || final.Error != "boom" {
		t.Fatalf("final: %+v", final)
	}
	late, cancel2, err := ops.watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel2()
	var lateSeen []string
	for ev := range late {
		if ev.Stage != nil {
			lateSeen = append(lateSeen, ev.Stage.Name+":"+ev.Stage.State)
		}
	}
	if strings.Join(lateSeen, " ") != "one:succeeded two:failed" {
		t.Fatalf("late watcher: %v", lateSeen)
	}
}

// TestOperationWatchEndsWithItsClient: a watcher whose context ends
// (the client hung up) is gone at once, not at the operation's next
// event: a silent stage can last minutes, and each watcher holds one of
// the daemon's limited connections.
func TestOperationWatchEndsWithItsClient(t *testing.T) {
	ctx := context.Background()
	ops := testOps(t)
	release := make(chan struct{})
	defer close(release)
	id, err := ops.start(ctx, "test", "x", func(ctx context.Context, stage stageFunc) (any, error) {
		return nil, stage("silent", func(context.Context) error { <-release; return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, hangUp := context.WithCancel(ctx)
	events, cancel, err := ops.watch(wctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	select {
	case <-events: // the running stage
	case <-time.After(10 * time.Second):
		t.Fatal("no first event")
	}
	hangUp()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-events:
			if !ok {
				ops.mu.Lock()
				n := len(ops.watchers[id])
				ops.mu.Unlock()
				if n != 0 {
					t.Fatalf("%d watchers still subscribed", n)
				}
				return
			}
		case <-deadline:
			t.Fatal("the watch outlived its client while the operation was silent")
		}
	}
}

// TestOperationNotFound: the engine answers an unknown id with a
// not_found *api.Error, which the HTTP layer sends as 404.
func TestOperationNotFound(t *testing.T) {
	ctx := context.Background()
	ops := testOps(t)
	if _, err := ops.GetOperation(ctx, "nope"); !errors.Is(err, api.ErrNotFound) || err.Error() != `no operation "nope"` {
		t.Fatalf("get: %v", err)
	}
	if _, _, err := ops.WatchOperation(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("watch: %v", err)
	}
	list, err := ops.ListOperations(ctx)
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("list: %v %v", list, err)
	}
}

// testOps is an operations engine over a real SQLite store in a
// temporary directory.
func testOps(t *testing.T) *operations {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newOps(opsDeps{store: st, log: slog.New(slog.NewTextHandler(io.Discard, nil)), base: ctx})
}
