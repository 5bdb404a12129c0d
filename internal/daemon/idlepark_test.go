package daemon

import (
	"net"
	"testing"
	"time"
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
