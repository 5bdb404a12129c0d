package vmmfake

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/vmm"
)

func spec(t *testing.T, id string) vmm.Spec {
	t.Helper()
	dir := t.TempDir()
	disk := filepath.Join(dir, "root.qcow2")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{ID: id, Dir: dir, Disks: []vmm.Disk{{Path: disk, Format: "qcow2"}}}
}

func dial(t *testing.T, f *Driver, dir string, timeout time.Duration) (*agentclient.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := agentclient.WaitReady(ctx, func(ctx context.Context) (net.Conn, error) { return f.DialAgent(ctx, dir) }, timeout)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func guestRun(t *testing.T, c *agentclient.Client, argv ...string) api.ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Exec(ctx, api.ExecRequest{Argv: argv})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := mux.RunExec(ctx, conn, nil, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestStartAgentPoweroff(t *testing.T) {
	t.Parallel()
	f := &Driver{}
	s := spec(t, "vm1")
	p, err := f.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Alive(p) || p.PID <= 1<<22 || p.State == "" {
		t.Fatalf("started %+v, alive %v", p, f.Alive(p))
	}
	c, err := dial(t, f, s.Dir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := c.Health(context.Background()); err != nil || h.Version == "" {
		t.Fatalf("health %+v %v", h, err)
	}
	// Nothing runs in the fake guest.
	if st := guestRun(t, c, "rm", "-rf", "/"); st.Code != 127 {
		t.Fatalf("exec answered %+v", st)
	}
	if st := guestRun(t, c, "systemctl", "poweroff", "--no-block"); st.Code != 0 {
		t.Fatalf("poweroff answered %+v", st)
	}
	if !vmm.WaitGone(context.Background(), f.Alive, p, 5*time.Second) {
		t.Fatal("the VMM outlived an honoured poweroff")
	}
	if _, err := f.DialAgent(context.Background(), s.Dir); err == nil {
		t.Fatal("dialled the agent of an exited VMM")
	}
	if want := []string{"start vm1", "poweroff vm1"}; !slices.Equal(f.Calls(), want) {
		t.Fatalf("calls %v, want %v", f.Calls(), want)
	}
}

func TestStopFallbacks(t *testing.T) {
	t.Parallel()
	f := &Driver{MaxWait: 50 * time.Millisecond}
	f.SetPoweroff(PoweroffIgnore)
	s := spec(t, "vm1")
	p, err := f.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dial(t, f, s.Dir, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	guestRun(t, c, "systemctl", "poweroff")
	if !f.Alive(p) {
		t.Fatal("an ignored poweroff stopped the VMM")
	}
	t0 := time.Now()
	if err := f.Stop(context.Background(), s.Dir, p, false, time.Minute); err != nil {
		t.Fatal(err)
	}
	if f.Alive(p) || time.Since(t0) > 5*time.Second {
		t.Fatalf("alive %v after %s", f.Alive(p), time.Since(t0))
	}
	want := []string{"start vm1", "poweroff vm1", "acpi vm1 timeout=1m0s", "kill vm1"}
	if !slices.Equal(f.Calls(), want) {
		t.Fatalf("calls %v, want %v", f.Calls(), want)
	}
	// The session went with the VMM.
	if _, err := c.Health(context.Background()); err == nil {
		t.Fatal("agent answered after the kill")
	}
	// Stopping a dead VMM does nothing.
	if err := f.Stop(context.Background(), s.Dir, p, true, 0); err != nil || len(f.Calls()) != len(want) {
		t.Fatalf("%v, calls %v", err, f.Calls())
	}
}

func TestPlans(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	f := &Driver{}
	f.Plan(1, Plan{Err: boom})
	f.Plan(2, Plan{Boot: BootExit})
	f.Plan(3, Plan{Boot: BootHang})
	f.Plan(4, Plan{Boot: BootStall})
	ctx := context.Background()

	if _, err := f.Start(ctx, spec(t, "a")); !errors.Is(err, boom) {
		t.Fatalf("start 1: %v", err)
	}
	if p, err := f.Start(ctx, spec(t, "b")); err != nil || f.Alive(p) {
		t.Fatalf("start 2 (exits): %v, alive %v", err, f.Alive(p))
	}
	for _, id := range []string{"c", "d"} {
		s := spec(t, id)
		p, err := f.Start(ctx, s)
		if err != nil || !f.Alive(p) {
			t.Fatalf("start %s: %v", id, err)
		}
		if _, err := dial(t, f, s.Dir, 300*time.Millisecond); err == nil {
			t.Fatalf("the agent of %s answered", id)
		}
		console, _ := os.ReadFile(filepath.Join(s.Dir, paths.FileConsoleLog))
		if stalled := strings.Contains(string(console), "systemd"); stalled != (id == "d") {
			t.Fatalf("console of %s: %q", id, console)
		}
	}
	// The fifth start has no plan: it boots.
	s := spec(t, "e")
	if _, err := f.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, f, s.Dir, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := f.Live(); !slices.Equal(got, []string{"c", "d", "e"}) || f.Starts() != 5 {
		t.Fatalf("live %v after %d starts", got, f.Starts())
	}
	// A VMM needs its disks.
	s = spec(t, "f")
	os.Remove(s.Disks[0].Path)
	if _, err := f.Start(ctx, s); err == nil {
		t.Fatal("started without a disk")
	}
}

func TestExitRecycle(t *testing.T) {
	t.Parallel()
	f := &Driver{}
	a, b := spec(t, "a"), spec(t, "b")
	pa, _ := f.Start(context.Background(), a)
	pb, _ := f.Start(context.Background(), b)
	f.Exit(a.Dir)
	f.Recycle(pb.PID)
	if f.Alive(pa) || f.PIDAlive(pa.PID) {
		t.Fatal("an exited VMM is alive")
	}
	// Another process has b's PID: alive, but not b's VMM.
	if f.Alive(pb) || !f.PIDAlive(pb.PID) {
		t.Fatalf("recycled: Alive %v, PID alive %v", f.Alive(pb), f.PIDAlive(pb.PID))
	}
	if err := f.Stop(context.Background(), b.Dir, pb, true, 0); err != nil || !f.PIDAlive(pb.PID) {
		t.Fatal("stopping b's VMM killed the process that got its PID")
	}
	if got := f.Live(); !slices.Equal(got, []string{"recycled"}) {
		t.Fatalf("live %v", got)
	}
}
