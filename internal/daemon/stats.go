package daemon

// Live VMM process figures for the VM view: CPU% and RSS from /proc, and
// the start time. CPU% is a rate, so it needs two samples; the daemon
// keeps the last sample per process and computes the delta when the VM is
// read again. A dashboard that lists every few seconds gets the CPU use
// over those seconds; a one-off read gets the average since the start.

import (
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// minCPUWindow is the shortest interval a CPU% is computed over: two
// reads closer than this (two clients listing at once) reuse the last
// figure instead of dividing a tick or two by a few milliseconds.
const minCPUWindow = time.Second

// staleSample is how long a sample of a process nobody reads is kept.
const staleSample = 5 * time.Minute

type cpuSample struct {
	at    time.Time
	ticks uint64
	pct   float64
}

// procKey names one process: a pid and its start time, so a recycled pid
// never inherits another process's sample.
type procKey struct {
	pid   int
	start uint64
}

type statsSampler struct {
	mu   sync.Mutex
	last map[procKey]cpuSample
	boot time.Time
}

type liveStats struct {
	startedAt  time.Time
	cpuPercent float64
	rssBytes   int64
}

// sample reads pid (which must have started at start) at time now.
func (s *statsSampler) sample(now time.Time, pid int, start uint64) (liveStats, bool) {
	if pid <= 0 {
		return liveStats{}, false
	}
	u, err := system.ReadProcUsage(pid)
	if err != nil || u.StartTicks != start {
		return liveStats{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.boot.IsZero() {
		b, err := system.BootTime()
		if err != nil {
			return liveStats{}, false
		}
		s.boot = b
	}
	if s.last == nil {
		s.last = map[procKey]cpuSample{}
	}
	started := system.ProcStartedAt(s.boot, u.StartTicks)
	key := procKey{pid, start}
	prev, ok := s.last[key]
	var pct float64
	switch {
	case ok && now.Sub(prev.at) < minCPUWindow:
		pct = prev.pct
	case ok:
		pct = cpuPercent(u.CPUTicks-min(prev.ticks, u.CPUTicks), now.Sub(prev.at))
		s.last[key] = cpuSample{at: now, ticks: u.CPUTicks, pct: pct}
	default:
		pct = cpuPercent(u.CPUTicks, now.Sub(started))
		s.last[key] = cpuSample{at: now, ticks: u.CPUTicks, pct: pct}
	}
	for k, v := range s.last {
		if now.Sub(v.at) > staleSample {
			delete(s.last, k)
		}
	}
	return liveStats{startedAt: started, cpuPercent: pct, rssBytes: u.RSSBytes}, true
}

// cpuPercent is CPU ticks over a wall-clock window, in percent of one
// core, rounded to one decimal.
func cpuPercent(ticks uint64, window time.Duration) float64 {
	if window <= 0 {
		return 0
	}
	busy := float64(ticks) / system.ClockTicks
	pct := busy / window.Seconds() * 100
	return float64(int64(pct*10+0.5)) / 10
}

// addLiveStats fills the live figures of a running VM's view.
func (d *Daemon) addLiveStats(out *api.VM, vm store.VM) {
	if vm.State == api.VMRunning || vm.State == api.VMStopping {
		if st, ok := d.stats.sample(time.Now(), vm.PID, vm.PIDStartTime); ok {
			t := st.startedAt
			out.StartedAt, out.CPUPercent, out.RSSBytes = &t, st.cpuPercent, st.rssBytes
		}
	}
	for _, s := range d.sessions.remembered(vm) {
		if !s.Final() {
			out.LiveSessions++
		}
	}
}
