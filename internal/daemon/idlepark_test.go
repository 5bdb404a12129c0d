package daemon

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

func TestEstablishedOn(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C42 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	// 0x9C41 = 40001 listens; 0x9C42 = 40002 has an established connection.
	if establishedOn(table, map[int]bool{40001: true}) {
		t.Error("a listening socket counted as a connection")
	}
	if !establishedOn(table, map[int]bool{40002: true}) {
		t.Error("an established connection was missed")
	}
	if establishedOn("garbage\n1: x y z\n", map[int]bool{1: true}) {
		t.Error("garbage counted")
	}
}

func TestActivityHold(t *testing.T) {
	var a activity
	now := time.Now()
	if got := a.idleSince("v", now); !got.Equal(now) {
		t.Errorf("first sight %v, want %v", got, now)
	}
	c1, c2 := net.Pipe()
	defer c2.Close()
	held := a.hold("v", c1)
	if !a.busy("v") {
		t.Fatal("an open stream does not keep the VM busy")
	}
	held.Close()
	held.Close()
	if a.busy("v") {
		t.Fatal("a closed stream (closed twice) still keeps the VM busy")
	}
	if !a.idleSince("v", time.Now()).After(now) {
		t.Error("closing a stream is not a use")
	}
}

// Idle park decides on a VM outside its lock: a use between that look
// and the park (a wake, an exec that waited for the lock) keeps it
// running, and a VM just started counts as used.
func TestFakeIdleParkRechecksUnderLock(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	one := h.mustCreate(d, "one")
	long := time.Now().Add(-time.Hour)
	if got := d.act.idleSince(one.ID, time.Now()); got.Before(time.Now().Add(-time.Minute)) {
		t.Fatalf("a VM just started is idle since %v", got)
	}
	d.act.mu.Lock()
	d.act.last[one.ID] = long
	d.act.mu.Unlock()
	since := d.act.idleSince(one.ID, time.Now())
	// Used after the look.
	d.act.touch(one.ID)
	if parked, err := d.parkIfIdle(context.Background(), one.Name, one.ID, since); err != nil || parked {
		t.Fatalf("parked a VM used after the idle look: %v %v", parked, err)
	}
	if vm := h.vm(d, "one"); vm.State != api.VMRunning {
		t.Fatalf("state %s", vm.State)
	}
	since = d.act.idleSince(one.ID, time.Now())
	if parked, err := d.parkIfIdle(context.Background(), one.Name, one.ID, since); err != nil || !parked {
		t.Fatalf("idle VM not parked: %v %v", parked, err)
	}
	if vm := h.vm(d, "one"); vm.State != api.VMParked {
		t.Fatalf("state %s", vm.State)
	}
}
