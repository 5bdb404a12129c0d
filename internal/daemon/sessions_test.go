package daemon

import (
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/store"
)

func TestSessionTrackerLostAndEvents(t *testing.T) {
	var tr sessionTracker
	vm := store.VM{ID: "vm1", Name: "box"}
	events, cancel := tr.watch("")
	defer cancel()
	t0 := time.Now()
	a := api.Session{ID: "a", Name: "a", State: api.SessionRunning, BootID: "boot1", StartedAt: t0}
	b := api.Session{ID: "b", Name: "b", State: api.SessionRunning, BootID: "boot1", StartedAt: t0.Add(time.Second)}
	tr.observe(vm, "boot1", []api.Session{a, b}, true)
	tr.observe(vm, "boot1", []api.Session{a, b}, true) // no change, no event
	if n := len(events); n != 2 {
		t.Fatalf("%d events after two new sessions, want 2", n)
	}
	<-events
	<-events

	// Same boot, b gone from the guest: it was removed, not lost.
	tr.observe(vm, "boot1", []api.Session{a}, true)
	if ss := tr.remembered(vm); len(ss) != 1 || ss[0].ID != "a" {
		t.Fatalf("after removal: %+v", ss)
	}
	// The guest rebooted: a is lost, and that is published.
	tr.observe(vm, "boot2", nil, true)
	ss := tr.remembered(vm)
	if len(ss) != 1 || ss[0].State != api.SessionLost || ss[0].Error == "" {
		t.Fatalf("after reboot: %+v", ss)
	}
	if ev := <-events; ev.Session == nil || ev.Session.State != api.SessionLost || ev.VM != "box" || ev.Kind != api.EventSession {
		t.Fatalf("event %+v", ev)
	}
	if s, ok := tr.find(vm, "a"); !ok || s.State != api.SessionLost {
		t.Fatalf("find = %+v %t", s, ok)
	}
	if live := tr.live(); live["vm1"] {
		t.Fatal("a lost session counts as live")
	}

	// A stopped VM: live sessions become lost.
	c := api.Session{ID: "c", Name: "c", State: api.SessionRunning, BootID: "boot2", StartedAt: t0}
	tr.observe(vm, "boot2", []api.Session{c}, false)
	tr.markLost(vm, "VM box is stopped")
	if s, _ := tr.find(vm, "c"); s.State != api.SessionLost {
		t.Fatalf("c = %+v", s)
	}
}
