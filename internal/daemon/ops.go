package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

// opFunc is the body of an operation. It reports progress through stage
// and returns a result (marshalled into the record) or an error.
type opFunc func(ctx context.Context, stage stageFunc) (any, error)

// stageFunc runs one named stage; its name, timing and outcome are
// persisted and published as they happen.
type stageFunc func(name string, fn func(ctx context.Context) error) error

// opError lets an operation attach a hint and a console tail to its error.
type opError struct {
	err         error
	hint        string
	consoleTail string
}

func (e *opError) Error() string { return e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// opsStore is the part of the store operations are recorded in.
type opsStore interface {
	CreateOperation(ctx context.Context, op *store.Operation) error
	GetOperation(ctx context.Context, id string) (store.Operation, error)
	ListOperations(ctx context.Context, limit int) ([]store.Operation, error)
	StartStage(ctx context.Context, opID, name string) (store.Stage, error)
	FinishStage(ctx context.Context, opID string, seq int, state, errText, detail string) error
	FinishOperation(ctx context.Context, id, state, errText, hint, consoleTail, resultJSON string) error
}

// opsDeps is what the operations engine needs from the daemon.
type opsDeps struct {
	store opsStore
	log   *slog.Logger
	// base is cancelled when the daemon shuts down.
	base context.Context
	// bus, when set, also gets every event (the daemon's GET /v1/events).
	bus func(api.BusEvent)
}

// operations runs long work in the background and fans its events out to
// watchers. The record lives in SQLite, so a watcher that reconnects (or a
// restarted daemon) still sees how an operation went. It implements the
// HTTP layer's Operations.
type operations struct {
	opsDeps

	mu       sync.Mutex
	watchers map[string][]chan api.Event
	running  sync.WaitGroup
	// meta names the running operations for the bus.
	meta map[string][2]string
}

func newOps(deps opsDeps) *operations {
	return &operations{opsDeps: deps, watchers: map[string][]chan api.Event{}}
}

func newID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// start records a new operation and runs fn in the background.
func (o *operations) start(ctx context.Context, kind, target string, fn opFunc) (string, error) {
	id := newID(6)
	op := store.Operation{ID: id, Kind: kind, Target: target, State: api.OpRunning, CreatedAt: time.Now().UTC()}
	if err := o.store.CreateOperation(ctx, &op); err != nil {
		return "", fmt.Errorf("record operation: %w", err)
	}
	o.mu.Lock()
	if o.meta == nil {
		o.meta = map[string][2]string{}
	}
	o.meta[id] = [2]string{kind, target}
	bus := o.bus
	o.mu.Unlock()
	if bus != nil {
		bus(opBusEvent(id, kind, target, api.Event{}))
	}
	o.running.Add(1)
	go func() {
		defer o.running.Done()
		o.run(id, kind, target, fn)
	}()
	return id, nil
}

func (o *operations) run(id, kind, target string, fn opFunc) {
	log := o.log.With("op", id, "kind", kind, "target", target)
	ctx := o.base
	started := time.Now()
	log.Info("operation started")
	stage := func(name string, sfn func(ctx context.Context) error) error {
		st, err := o.store.StartStage(ctx, id, name)
		seq := st.Seq
		if err != nil {
			return fmt.Errorf("record stage %s: %w", name, err)
		}
		t0 := time.Now().UTC()
		o.publish(id, api.Event{Stage: &api.Stage{Seq: seq, Name: name, State: api.OpRunning, StartedAt: t0}})
		out := &stageWriter{publish: func(text string) {
			o.publish(id, api.Event{Output: &api.StageOutput{Seq: seq, Text: text}})
		}}
		serr := sfn(context.WithValue(ctx, stageOutputKey{}, out))
		out.flush()
		state, msg := api.OpSucceeded, ""
		if serr != nil {
			state, msg = api.OpFailed, serr.Error()
		}
		t1 := time.Now().UTC()
		if err := o.store.FinishStage(ctx, id, seq, state, msg, ""); err != nil {
			log.Error("record stage end", "stage", name, "err", err)
		}
		o.publish(id, api.Event{Stage: &api.Stage{Seq: seq, Name: name, State: state, StartedAt: t0, FinishedAt: &t1, Error: msg}})
		log.Info("stage finished", "stage", name, "state", state, "took", t1.Sub(t0).Round(time.Millisecond))
		return serr
	}
	result, err := fn(ctx, stage)
	state, msg, hint, tail, resJSON := api.OpSucceeded, "", "", "", ""
	if err != nil {
		state, msg = api.OpFailed, err.Error()
		var oe *opError
		if errors.As(err, &oe) {
			hint, tail = oe.hint, oe.consoleTail
		}
		var ae *api.Error
		if errors.As(err, &ae) && hint == "" {
			hint = ae.Hint
		}
		log.Error("operation failed", "err", err, "took", time.Since(started).Round(time.Millisecond))
	} else {
		log.Info("operation succeeded", "took", time.Since(started).Round(time.Millisecond))
	}
	if result != nil {
		if b, jerr := json.Marshal(result); jerr == nil {
			resJSON = string(b)
		}
	}
	// A shutting-down daemon still records the outcome.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := o.store.FinishOperation(fctx, id, state, msg, hint, tail, resJSON); err != nil {
		log.Error("record operation end", "err", err)
	}
	final, gerr := o.get(fctx, id)
	if gerr != nil {
		log.Error("reload operation", "err", gerr)
		final = api.Operation{ID: id, State: state, Error: msg}
	}
	o.publish(id, api.Event{Done: true, Operation: &final})
	o.closeWatchers(id)
}

func (o *operations) get(ctx context.Context, id string) (api.Operation, error) {
	op, err := o.store.GetOperation(ctx, id)
	if err != nil {
		return api.Operation{}, err
	}
	return operationView(op), nil
}

// listedOperations is how many operations GET /v1/operations shows, the
// newest first.
const listedOperations = 50

// ListOperations returns the newest operations.
func (o *operations) ListOperations(ctx context.Context) ([]api.Operation, error) {
	ops, err := o.store.ListOperations(ctx, listedOperations)
	if err != nil {
		return nil, err
	}
	out := make([]api.Operation, 0, len(ops))
	for _, op := range ops {
		out = append(out, operationView(op))
	}
	return out, nil
}

// GetOperation returns one operation's record.
func (o *operations) GetOperation(ctx context.Context, id string) (api.Operation, error) {
	op, err := o.get(ctx, id)
	return op, notFoundOp(id, err)
}

// WatchOperation is watch for the API: an unknown id is not_found.
func (o *operations) WatchOperation(ctx context.Context, id string) (<-chan api.Event, func(), error) {
	events, cancel, err := o.watch(ctx, id)
	return events, cancel, notFoundOp(id, err)
}

func notFoundOp(id string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return api.Errorf(api.CodeNotFound, "", "no operation %q", id)
	}
	return err
}

func operationView(op store.Operation) api.Operation {
	out := api.Operation{
		ID: op.ID, Kind: op.Kind, Target: op.Target, State: op.State, Error: op.Error,
		Hint: op.Hint, ConsoleTail: op.ConsoleTail, CreatedAt: op.CreatedAt, FinishedAt: op.FinishedAt,
		Stages: []api.Stage{},
	}
	if op.ResultJSON != "" {
		out.Result = json.RawMessage(op.ResultJSON)
	}
	for _, s := range op.Stages {
		out.Stages = append(out.Stages, api.Stage{Seq: s.Seq, Name: s.Name, State: s.State, StartedAt: s.StartedAt, FinishedAt: s.FinishedAt, Error: s.Error})
	}
	return out
}

// watch subscribes to an operation. The returned channel first gets the
// stages recorded so far, then live events, and is closed after the final
// event. Subscribing before reading the record means no event falls between.
func (o *operations) watch(ctx context.Context, id string) (<-chan api.Event, func(), error) {
	ch := make(chan api.Event, 256)
	o.mu.Lock()
	o.watchers[id] = append(o.watchers[id], ch)
	o.mu.Unlock()
	cancel := func() { o.unwatch(id, ch) }
	op, err := o.get(ctx, id)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	out := make(chan api.Event, 256)
	go func() {
		defer close(out)
		// Every send and every wait also watches ctx: a watcher whose
		// client left must not sit on a silent operation (a stage can be
		// quiet for minutes) holding a connection slot.
		defer cancel()
		send := func(ev api.Event) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		seen := map[int]string{}
		for i := range op.Stages {
			s := op.Stages[i]
			seen[s.Seq] = s.State
			if !send(api.Event{Stage: &s}) {
				return
			}
		}
		if op.State != api.OpRunning {
			send(api.Event{Done: true, Operation: &op})
			return
		}
		for {
			var ev api.Event
			var ok bool
			select {
			case ev, ok = <-ch:
			case <-ctx.Done():
				return
			}
			if !ok {
				return
			}
			// Skip replays of what the snapshot already showed.
			if ev.Stage != nil && seen[ev.Stage.Seq] == ev.Stage.State {
				continue
			}
			if !send(ev) {
				return
			}
		}
	}()
	return out, cancel, nil
}

func (o *operations) publish(id string, ev api.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if m, ok := o.meta[id]; ok && o.bus != nil {
		o.bus(opBusEvent(id, m[0], m[1], ev))
	}
	for _, ch := range o.watchers[id] {
		select {
		case ch <- ev:
		default:
			// A watcher that stopped reading loses live events but can
			// always re-read the persisted record.
		}
	}
}

func (o *operations) unwatch(id string, ch chan api.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	list := o.watchers[id]
	for i, c := range list {
		if c == ch {
			o.watchers[id] = append(list[:i], list[i+1:]...)
			close(ch)
			break
		}
	}
	if len(o.watchers[id]) == 0 {
		delete(o.watchers, id)
	}
}

func (o *operations) closeWatchers(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, ch := range o.watchers[id] {
		close(ch)
	}
	delete(o.watchers, id)
	delete(o.meta, id)
}
