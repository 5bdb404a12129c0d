package daemon

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// TestVMViewLiveStats points a running VM record at a real `sleep` child
// and checks that the VM view carries its start time and RSS, and nothing
// once the record's start time no longer matches (a recycled pid).
func TestVMViewLiveStats(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	start, err := system.ProcStartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "dev", ImageID: img.ID, State: api.VMRunning, PID: cmd.Process.Pid, PIDStartTime: start}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	d.sessions.observe(vm, "b", []api.Session{
		{ID: "s1", Name: "one", State: api.SessionRunning},
		{ID: "s2", Name: "two", State: api.SessionExited},
	}, true)
	v := d.vmView(ctx, vm)
	if v.RSSBytes <= 0 {
		t.Errorf("RSS = %d for a live sleep", v.RSSBytes)
	}
	if v.StartedAt == nil || time.Since(*v.StartedAt) > time.Minute || time.Since(*v.StartedAt) < -2*time.Second {
		t.Errorf("started at %v, the child started just now", v.StartedAt)
	}
	if v.CPUPercent < 0 || v.CPUPercent > 100 {
		t.Errorf("sleep uses %.1f%% CPU", v.CPUPercent)
	}
	if v.LiveSessions != 1 {
		t.Errorf("live sessions = %d, want 1 (one running, one exited)", v.LiveSessions)
	}

	vm.PIDStartTime++
	if v := d.vmView(ctx, vm); v.RSSBytes != 0 || v.StartedAt != nil {
		t.Errorf("stats of a process with another start time: %+v", v)
	}
	vm.PIDStartTime--
	vm.State = api.VMStopped
	if v := d.vmView(ctx, vm); v.RSSBytes != 0 || v.StartedAt != nil {
		t.Errorf("stats of a stopped VM: %+v", v)
	}
}

// TestStatsSamplerDelta samples the test process around a busy loop: the
// second figure is the CPU use between the two samples (checked against
// /proc read just before and after each sample, so a loaded machine
// cannot fail it), and a sample closer than minCPUWindow reuses the
// previous figure.
func TestStatsSamplerDelta(t *testing.T) {
	pid := os.Getpid()
	start, err := system.ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	ticks := func() uint64 {
		u, err := system.ReadProcUsage(pid)
		if err != nil {
			t.Fatal(err)
		}
		return u.CPUTicks
	}
	var s statsSampler
	t0 := time.Now()
	a0 := ticks()
	if _, ok := s.sample(t0, pid, start); !ok {
		t.Fatal("no sample of the test process")
	}
	a1 := ticks()
	for time.Since(t0) < 1200*time.Millisecond {
	}
	t1 := time.Now()
	b0 := ticks()
	st, ok := s.sample(t1, pid, start)
	if !ok {
		t.Fatal("no second sample")
	}
	b1 := ticks()
	if b0 <= a1 {
		t.Fatalf("a 1.2 s busy loop used no CPU ticks (%d -> %d)", a1, b0)
	}
	lo := cpuPercent(b0-a1, t1.Sub(t0)) - 0.1
	hi := cpuPercent(b1-a0, t1.Sub(t0)) + 0.1
	if st.cpuPercent < lo || st.cpuPercent > hi || st.cpuPercent <= 0 {
		t.Errorf("cpu = %.1f%%, want %.1f..%.1f from /proc around the samples", st.cpuPercent, lo, hi)
	}
	again, _ := s.sample(t1.Add(10*time.Millisecond), pid, start)
	if again.cpuPercent != st.cpuPercent {
		t.Errorf("a sample 10ms later gave %.1f, want the previous %.1f", again.cpuPercent, st.cpuPercent)
	}
	if _, ok := s.sample(t1, pid, start+1); ok {
		t.Error("sampled a pid whose start time does not match")
	}
}

func TestCPUPercent(t *testing.T) {
	cases := []struct {
		ticks  uint64
		window time.Duration
		want   float64
	}{
		{100, time.Second, 100},
		{50, time.Second, 50},
		{300, 2 * time.Second, 150},
		{1, 3 * time.Second, 0.3},
		{10, 0, 0},
	}
	for _, c := range cases {
		if got := cpuPercent(c.ticks, c.window); got != c.want {
			t.Errorf("cpuPercent(%d, %v) = %v, want %v", c.ticks, c.window, got, c.want)
		}
	}
}
