package daemon

// The event bus (GET /v1/events) carries four kinds of news: sessions
// (sessions.go), VMs, operations (ops.go) and egress connections
// (egressengine.go); the bus and the VM table watcher are here.
//
// VM events come from watching the VMs table rather than from hooks in
// every lifecycle path: whatever changes a VM (create, start, stop,
// delete, a crash found by reconcile, code added later) goes through the
// store, so a diff of the table cannot miss a path. The table is read
// every vmWatchInterval, only while someone watches the bus; that is a
// local SQLite read of a few rows, and no guest or VMM is touched.
// Operation events are pushed by the operations runner as they happen.

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

// vmWatchInterval bounds how late a VM event is.
const vmWatchInterval = 300 * time.Millisecond

// eventBus fans events out to the watchers of GET /v1/events. Sessions,
// the VM table watcher and the operations runner publish into it.
type eventBus struct {
	mu       sync.Mutex
	watchers map[chan api.BusEvent]string // filter: a VM name, or "" for all
}

// publish sends ev to every watcher whose filter matches. A nil bus
// drops it.
func (b *eventBus) publish(ev api.BusEvent) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch, filter := range b.watchers {
		if filter != "" && filter != ev.VM {
			continue
		}
		select {
		case ch <- ev:
		default:
			// A watcher that stopped reading loses events; it can always
			// list again.
		}
	}
}

// watch subscribes to the bus (one VM's events when vm is set) until the
// returned cancel.
func (b *eventBus) watch(vm string) (chan api.BusEvent, func()) {
	ch := make(chan api.BusEvent, 256)
	b.mu.Lock()
	if b.watchers == nil {
		b.watchers = map[chan api.BusEvent]string{}
	}
	b.watchers[ch] = vm
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.watchers, ch)
		b.mu.Unlock()
	}
}

// watched reports whether anyone listens.
func (b *eventBus) watched() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.watchers) > 0
}

// vmKey is what a VM event is about: a change in any of these fields.
type vmKey struct {
	name, state, lastError string
	pid                    int
}

func keyOf(vm store.VM) vmKey {
	return vmKey{name: vm.Name, state: vm.State, lastError: vm.LastError, pid: vm.PID}
}

// vmDiff compares two snapshots of the VMs table and returns the events
// that turn before into after, in a stable order (created and changed in
// table order, then deleted).
func vmDiff(before map[string]store.VM, after []store.VM) []vmChange {
	var out []vmChange
	seen := map[string]bool{}
	for _, vm := range after {
		seen[vm.ID] = true
		old, ok := before[vm.ID]
		switch {
		case !ok:
			out = append(out, vmChange{api.VMCreated, vm})
		case keyOf(old) != keyOf(vm):
			out = append(out, vmChange{api.VMChanged, vm})
		}
	}
	for id, vm := range before {
		if !seen[id] {
			out = append(out, vmChange{api.VMDeleted, vm})
		}
	}
	return out
}

type vmChange struct {
	change string
	vm     store.VM
}

// vmWatchDeps is what the VM table watcher needs.
type vmWatchDeps struct {
	listVMs func(ctx context.Context) ([]store.VM, error)
	// view is the public view a VM event carries.
	view func(ctx context.Context, vm store.VM) api.VM
	// bus is where events go; the watcher reads only while it has
	// watchers.
	bus *eventBus
	log *slog.Logger
}

// vmWatcher turns changes of the VMs table into bus events.
type vmWatcher struct {
	vmWatchDeps
}

// vmWatcher builds the daemon's VM table watcher.
func (d *Daemon) vmWatcher() *vmWatcher {
	return &vmWatcher{vmWatchDeps{listVMs: d.store.ListVMs, view: d.vmView, bus: &d.bus, log: d.log}}
}

// startVMWatcher starts the VM table watcher once per daemon.
func (d *Daemon) startVMWatcher() {
	d.vmWatchOnce.Do(func() {
		go d.vmWatcher().run(d.ops.base, vmWatchInterval)
	})
}

func (w *vmWatcher) run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var snap map[string]store.VM
	for {
		if !w.bus.watched() {
			// Nobody to tell: forget the snapshot, so a new watcher is
			// not flooded with changes from before it came.
			snap = nil
		} else {
			snap = w.step(ctx, snap)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// step reads the VMs table, publishes what changed since snap (nothing
// when snap is nil: the first look) and returns the new snapshot.
func (w *vmWatcher) step(ctx context.Context, snap map[string]store.VM) map[string]store.VM {
	vms, err := w.listVMs(ctx)
	if err != nil {
		w.log.Debug("watch vms", "err", err)
		return snap
	}
	if snap != nil {
		for _, c := range vmDiff(snap, vms) {
			w.publish(ctx, c)
		}
	}
	next := make(map[string]store.VM, len(vms))
	for _, vm := range vms {
		next[vm.ID] = vm
	}
	return next
}

func (w *vmWatcher) publish(ctx context.Context, c vmChange) {
	var view api.VM
	if c.change == api.VMDeleted {
		view = api.VM{ID: c.vm.ID, Name: c.vm.Name, State: c.vm.State, VMM: c.vm.VMM}
	} else {
		view = w.view(ctx, c.vm)
	}
	w.bus.publish(api.BusEvent{Time: time.Now().UTC(), Kind: api.EventVM, VM: c.vm.Name, Change: c.change, VMInfo: &view})
}

// opBusEvent turns an operation event into a bus event. Operations on a
// VM (vm.*, workspace.prepare) carry the VM's name, so `events --vm`
// shows them.
func opBusEvent(id, kind, target string, ev api.Event) api.BusEvent {
	be := api.BusEvent{Time: time.Now().UTC(), Kind: api.EventOperation, Stage: ev.Stage, Done: ev.Done}
	if ev.Operation != nil {
		be.Operation = ev.Operation
	} else {
		be.Operation = &api.Operation{ID: id, Kind: kind, Target: target, State: api.OpRunning}
	}
	if strings.HasPrefix(kind, "vm.") || kind == store.OpKindWorkspacePrepare {
		be.VM = target
	}
	return be
}
