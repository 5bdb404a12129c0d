package daemon

// Idle park: with [vm] idle_park set, a running VM that nobody used for
// that long (no exec, ssh, session or workspace call through the daemon,
// no connection on its forwarded ports) and whose VMM burned little CPU
// is parked; its next use wakes it (useVM).

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// idleCPUPercent is the VMM CPU (percent of one core, between two
// checks) below which a VM counts as idle: an idle agent-image guest
// under TCG measured 6-12% of a core on these machines (timer ticks,
// systemd, the agent), one at work far more.
const idleCPUPercent = 20.0

// activity is when each VM was last used, and its VMM's CPU ticks then.
type activity struct {
	mu   sync.Mutex
	last map[string]time.Time
	cpu  map[string]cpuMark
	open map[string]int
}

type cpuMark struct {
	at    time.Time
	ticks uint64
	pid   int
}

// touch records a use of a VM now.
func (a *activity) touch(vmID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	a.last[vmID] = time.Now()
}

// idleSince is the VM's last use (first sight when never used).
func (a *activity) idleSince(vmID string, now time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	t, ok := a.last[vmID]
	if !ok {
		a.last[vmID] = now
		return now
	}
	return t
}

// cpuSince is the VMM's CPU percent since the previous call for it (or
// -1 the first time), and marks now.
func (a *activity) cpuSince(vmID string, pid int, now time.Time) float64 {
	u, err := system.ReadProcUsage(pid)
	if err != nil {
		return -1
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cpu == nil {
		a.cpu = map[string]cpuMark{}
	}
	prev, ok := a.cpu[vmID]
	a.cpu[vmID] = cpuMark{at: now, ticks: u.CPUTicks, pid: pid}
	if !ok || prev.pid != pid || u.CPUTicks < prev.ticks {
		return -1
	}
	return cpuPercent(u.CPUTicks-prev.ticks, now.Sub(prev.at))
}

// idleParkLoop parks idle VMs until ctx ends.
func (d *Daemon) idleParkLoop(ctx context.Context, after time.Duration) {
	tick := after / 4
	tick = min(max(tick, 5*time.Second), time.Minute)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			continue
		}
		now := time.Now()
		for _, vm := range vms {
			if vm.State != api.VMRunning || isTap(vm) {
				continue
			}
			if _, err := d.snapshotter(vm); err != nil {
				continue
			}
			cpu := d.act.cpuSince(vm.ID, vm.PID, now)
			if d.act.busy(vm.ID) || d.forwardInUse(ctx, vm) {
				d.act.touch(vm.ID)
				continue
			}
			since := d.act.idleSince(vm.ID, now)
			if now.Sub(since) < after || cpu < 0 || cpu > idleCPUPercent {
				continue
			}
			parked, err := d.parkIfIdle(ctx, vm.Name, vm.ID, since)
			if err != nil {
				d.log.Warn("idle park failed", "vm", vm.Name, "err", err)
			} else if parked {
				d.log.Info("parked idle VM", "vm", vm.Name, "idle", now.Sub(since).Round(time.Second), "cpu_percent", cpu)
			}
		}
	}
}

// parkIfIdle parks the VM if, under its lock, nothing used it since the
// idle look (its last use is still since, no stream open): a wake or an
// exec that came meanwhile, or waited for the lock, keeps it running.
func (d *Daemon) parkIfIdle(ctx context.Context, name, id string, since time.Time) (bool, error) {
	unlock := d.lockVM(name)
	defer unlock()
	vm, err := d.getVM(ctx, name)
	if err != nil || vm.ID != id || vm.State != api.VMRunning {
		return false, nil
	}
	if d.act.busy(id) || !d.act.idleSince(id, time.Now()).Equal(since) {
		return false, nil
	}
	if _, err := d.parkLocked(ctx, name); err != nil {
		return false, err
	}
	return true, nil
}

// forwardInUse says whether a host connection is established on one of
// the VM's forwarded ports (ssh, opencode, ...): someone is using it.
func (d *Daemon) forwardInUse(ctx context.Context, vm store.VM) bool {
	ports, err := d.store.PortsForVM(ctx, vm.ID)
	if err != nil || len(ports) == 0 {
		return false
	}
	want := map[int]bool{}
	for _, p := range ports {
		want[p.Port] = true
	}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if establishedOn(string(b), want) {
			return true
		}
	}
	return false
}

// establishedOn scans a /proc/net/tcp table for an ESTABLISHED socket
// whose local port is in ports.
func establishedOn(table string, ports map[int]bool) bool {
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "01" {
			continue
		}
		_, port, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(port, 16, 16); err == nil && ports[int(n)] {
			return true
		}
	}
	return false
}

// hold counts c as a use of the VM until it is closed: an exec or an
// attached session keeps its VM awake however long it lasts.
func (a *activity) hold(vmID string, c net.Conn) net.Conn {
	a.mu.Lock()
	if a.open == nil {
		a.open = map[string]int{}
	}
	a.open[vmID]++
	a.mu.Unlock()
	return &heldConn{Conn: c, release: func() {
		a.mu.Lock()
		a.open[vmID]--
		a.mu.Unlock()
		a.touch(vmID)
	}}
}

func (a *activity) busy(vmID string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.open[vmID] > 0
}

type heldConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (h *heldConn) Close() error {
	err := h.Conn.Close()
	h.once.Do(h.release)
	return err
}
