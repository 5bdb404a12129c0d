package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

func nextEvent(t *testing.T, ch <-chan api.BusEvent, kind string) api.BusEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event within 10s", kind)
		}
	}
}

// TestVMEventsOnStateChanges changes a real store the way the lifecycle
// code does and checks that a bus watcher hears of each change.
func TestVMEventsOnStateChanges(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	events, stop := d.bus.watch("")
	defer stop()
	other, stopOther := d.bus.watch("someone-else")
	defer stopOther()
	vw := d.vmWatcher()
	snap := vw.step(ctx, nil)
	step := func() api.BusEvent {
		t.Helper()
		snap = vw.step(ctx, snap)
		select {
		case ev := <-events:
			if ev.Kind != api.EventVM {
				t.Fatalf("event %+v", ev)
			}
			return ev
		default:
			t.Fatal("no event after a change")
		}
		return api.BusEvent{}
	}

	vm := store.VM{Name: "dev", ImageID: img.ID}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	ev := step()
	if ev.Change != api.VMCreated || ev.VM != "dev" || ev.VMInfo == nil || ev.VMInfo.State != api.VMCreating {
		t.Fatalf("create: %+v", ev)
	}
	if err := d.store.SetVMState(ctx, vm.ID, api.VMRunning, ""); err != nil {
		t.Fatal(err)
	}
	ev = step()
	if ev.Change != api.VMChanged || ev.VMInfo.State != api.VMRunning {
		t.Fatalf("running: %+v", ev)
	}
	// A change of nothing the event is about: no event.
	snap = vw.step(ctx, snap)
	if len(events) != 0 {
		t.Fatalf("event without a change: %+v", <-events)
	}
	if err := d.store.SetVMState(ctx, vm.ID, api.VMStopped, "qemu exited"); err != nil {
		t.Fatal(err)
	}
	ev = step()
	if ev.VMInfo.State != api.VMStopped || ev.VMInfo.LastError != "qemu exited" {
		t.Fatalf("stopped: %+v", ev)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	ev = step()
	if ev.Change != api.VMDeleted || ev.VM != "dev" {
		t.Fatalf("delete: %+v", ev)
	}
	select {
	case ev := <-other:
		t.Fatalf("a watcher of another VM got %+v", ev)
	default:
	}
}

// TestVMWatcherLoop runs the watcher goroutine as the daemon does and
// flips a VM's state until an event arrives (the loop's first snapshot
// may or may not include the first flip).
func TestVMWatcherLoop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := testDaemon(t, nil)
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "dev", ImageID: img.ID}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	events, stop := d.bus.watch("dev")
	defer stop()
	go d.vmWatcher().run(ctx, 10*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	states := []string{api.VMRunning, api.VMStopped}
	for i := 0; ; i++ {
		if err := d.store.SetVMState(ctx, vm.ID, states[i%2], ""); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-events:
			if ev.Kind != api.EventVM || ev.VM != "dev" || ev.Change != api.VMChanged {
				t.Fatalf("event %+v", ev)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher loop published nothing in 10s of state changes")
		}
	}
}

func TestVMDiff(t *testing.T) {
	a := store.VM{ID: "1", Name: "a", State: api.VMRunning, PID: 5}
	b := store.VM{ID: "2", Name: "b", State: api.VMStopped}
	before := map[string]store.VM{"1": a, "2": b}
	a2 := a
	a2.CPUs = 4 // not part of the event key: no event
	if got := vmDiff(before, []store.VM{a2, b}); len(got) != 0 {
		t.Fatalf("cpu change gave events: %+v", got)
	}
	a3 := a
	a3.PID = 6
	c := store.VM{ID: "3", Name: "c", State: api.VMCreating}
	got := vmDiff(before, []store.VM{a3, c})
	want := []string{api.VMChanged + " a", api.VMCreated + " c", api.VMDeleted + " b"}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range got {
		if s := got[i].change + " " + got[i].vm.Name; s != want[i] {
			t.Errorf("event %d = %s, want %s", i, s, want[i])
		}
	}
}

// TestOperationBusEvents runs an operation and checks the bus sees it
// start, each stage start and finish, and the end, with the VM name.
func TestOperationBusEvents(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	d.ops = newOps(opsDeps{store: d.store, log: slog.New(slog.NewTextHandler(io.Discard, nil)), base: ctx, bus: d.bus.publish})
	events, stop := d.bus.watch("dev")
	defer stop()
	id, err := d.ops.start(ctx, store.OpKindVMCreate, "dev", func(ctx context.Context, stage stageFunc) (any, error) {
		if err := stage("boot", func(context.Context) error { return nil }); err != nil {
			return nil, err
		}
		return nil, stage("agent", func(context.Context) error { return errors.New("no agent") })
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		ev := nextEvent(t, events, api.EventOperation)
		if ev.Operation == nil || ev.Operation.ID != id || ev.VM != "dev" {
			t.Fatalf("event %+v", ev)
		}
		switch {
		case ev.Done:
			got = append(got, "done "+ev.Operation.State)
		case ev.Stage != nil:
			got = append(got, ev.Stage.Name+" "+ev.Stage.State)
		default:
			got = append(got, "started")
		}
		if ev.Done {
			break
		}
	}
	want := "started,boot running,boot succeeded,agent running,agent failed,done failed"
	if s := strings.Join(got, ","); s != want {
		t.Fatalf("events %s\nwant   %s", s, want)
	}
}
