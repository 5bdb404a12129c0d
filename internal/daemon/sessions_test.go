package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentclient"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

func TestSessionTrackerLostAndEvents(t *testing.T) {
	tr := sessionTracker{bus: &eventBus{}}
	vm := store.VM{ID: "vm1", Name: "box"}
	events, cancel := tr.bus.watch("")
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

// TestPerVMStateShrinksWhenVMsGo: creating and deleting many VMs leaves
// no per-VM entry behind in the daemon's maps (locks, agent cache,
// session memory).
func TestPerVMStateShrinksWhenVMsGo(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	d.drivers = newDrivers(d.cfg)
	d.vmLocks, d.creating, d.agents = map[string]*vmLock{}, map[string]bool{}, map[string]*agentclient.Client{}
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		vm := store.VM{Name: fmt.Sprintf("vm%d", i), ImageID: img.ID, Dir: filepath.Join(t.TempDir(), "vm"), State: api.VMStopped}
		if err := d.store.CreateVM(ctx, &vm); err != nil {
			t.Fatal(err)
		}
		d.lockVM(vm.Name)()
		d.lockAgentDial(vm.ID)()
		d.sessions.observe(vm, "boot1", []api.Session{{ID: "s1", State: api.SessionRunning, BootID: "boot1"}}, true)
		d.sessions.markLost(vm, "stopped")
		if err := d.DeleteVM(ctx, vm.Name, false); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	locks, agents := len(d.vmLocks), len(d.agents)
	d.mu.Unlock()
	d.sessions.mu.Lock()
	sessions := len(d.sessions.vms)
	d.sessions.mu.Unlock()
	if locks != 0 || agents != 0 || sessions != 0 {
		t.Fatalf("after deleting every VM: %d locks, %d agents, %d session records remain", locks, agents, sessions)
	}
}

// TestVMLockEntryOutlivesWaiters: a lock entry is freed only once no one
// holds or waits for it, so two lockers never get different mutexes.
func TestVMLockEntryOutlivesWaiters(t *testing.T) {
	d := &Daemon{vmLocks: map[string]*vmLock{}}
	unlock := d.lockVM("a")
	got := make(chan struct{})
	go func() {
		u := d.lockVM("a")
		close(got)
		u()
	}()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("second locker got the lock while the first held it")
	default:
	}
	unlock()
	<-got
	time.Sleep(10 * time.Millisecond)
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.vmLocks) != 0 {
		t.Fatalf("%d lock entries left", len(d.vmLocks))
	}
}

// TestLostSessionsArePruned: a guest that keeps starting sessions and
// rebooting cannot grow the daemon's memory of ended sessions without
// bound; the newest are kept.
func TestLostSessionsArePruned(t *testing.T) {
	var tr sessionTracker
	vm := store.VM{ID: "vm1", Name: "box"}
	t0 := time.Now()
	for boot := range 50 {
		var ss []api.Session
		for i := range 20 {
			ss = append(ss, api.Session{ID: fmt.Sprintf("b%d-s%d", boot, i), State: api.SessionRunning, BootID: fmt.Sprint(boot), StartedAt: t0.Add(time.Duration(boot*20+i) * time.Second)})
		}
		tr.observe(vm, fmt.Sprint(boot), ss, true)
	}
	tr.observe(vm, "last", nil, true)
	ss := tr.remembered(vm)
	if len(ss) > maxEndedSessions {
		t.Fatalf("%d sessions remembered, cap %d", len(ss), maxEndedSessions)
	}
	if newest := ss[len(ss)-1]; newest.ID != "b49-s19" || newest.State != api.SessionLost {
		t.Fatalf("newest kept = %+v", newest)
	}
}
