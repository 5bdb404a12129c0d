package daemon

// The VM lifecycle on a real daemon (its SQLite state, locks, operations
// and reconcile) with the fake VMM driver: nothing boots, so every case,
// failures and crashes included, runs in a few seconds in all.
// Engine methods are called directly, not through HTTP.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/vmmfake"
)

// fakeImageID is the fake host's one image.
const fakeImageID = "1ma9e001"

// hangTimeout is the boot timeout of tests whose guests hang: a guest
// that answers does so in milliseconds, even on a loaded machine.
const hangTimeout = 1500 * time.Millisecond

// fakeHost is a host whose VMMs are vmmfake's: daemons opened on it
// share the state directory, the fake driver (the host's "processes")
// and the command runner.
type fakeHost struct {
	t    *testing.T
	home string
	cfg  config.Config
	drv  *vmmfake.Driver
	run  *system.Fake
	log  *syncBuffer
	img  store.Image
}

// fakeDaemon is one daemon of a fakeHost.
type fakeDaemon struct {
	*Daemon
	cancel context.CancelFunc
	closed bool
}

// newFakeHost makes a host with one image, "base". Root-only machinery
// is off: user networking, VMMs as the daemon's own user (no per-VM uid,
// no nftables guard), and the accelerator is fixed so that no KVM probe
// boots a real QEMU. tweak adjusts the config.
func newFakeHost(t *testing.T, tweak func(*config.Config)) *fakeHost {
	t.Helper()
	// The create preflight looks these up in PATH (it runs none of them).
	needTools(t, "qemu-system-x86_64", "qemu-img", "mkfs.ext4")
	cfg := config.Default()
	cfg.Daemon.Accel = "tcg"
	cfg.VMMProcess.UIDRange = ""
	cfg.VM.Net = config.NetUser
	cfg.VM.VMM = config.VMMQEMU
	cfg.VM.MemoryMiB = 256
	cfg.Auth.Files = nil
	if tweak != nil {
		tweak(&cfg)
	}
	h := &fakeHost{t: t, home: t.TempDir(), cfg: cfg, drv: &vmmfake.Driver{}, log: &syncBuffer{}}
	// Disk commands run nowhere; the root overlay is created so that the
	// fake VMM finds every disk of its spec, as a real one must.
	h.run = &system.Fake{Handler: func(_ context.Context, c system.FakeCall) ([]byte, error) {
		if len(c.Argv) > 2 && c.Argv[0] == "qemu-img" && c.Argv[1] == "create" {
			return nil, os.WriteFile(c.Argv[len(c.Argv)-1], nil, 0o600)
		}
		return nil, nil
	}}
	// The guest agent binary goes onto each seed disk (mkfs runs nowhere).
	if err := os.WriteFile(filepath.Join(h.home, "banger-agent"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := h.open()
	imgDir := d.layout.ImageDir(fakeImageID)
	mkdirs(t, filepath.Join(imgDir, image.DirWorkSeed))
	for _, f := range []string{image.FileKernel, image.FileRootfs, image.FileManifest, image.FileMeta} {
		if err := os.WriteFile(filepath.Join(imgDir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h.img = store.Image{ID: fakeImageID, Name: "base", Dir: imgDir, Fingerprint: "fp", KernelVersion: "6.1.0", Manifest: `{}`}
	if err := d.store.CreateImage(context.Background(), &h.img); err != nil {
		t.Fatal(err)
	}
	h.close(d)
	return h
}

// open starts a daemon on the host; it is closed when the test ends.
func (h *fakeHost) open() *fakeDaemon {
	h.t.Helper()
	layout := paths.Resolve(func(k string) string {
		if k == paths.EnvHome {
			return h.home
		}
		return ""
	}, os.Getuid())
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, Options{
		Layout: layout, Config: h.cfg, Logger: slog.New(slog.NewTextHandler(h.log, nil)),
		AgentPath: filepath.Join(h.home, "banger-agent"),
		Runner:    h.run, NetHost: network.NewFake(),
		Drivers: map[string]vmm.Driver{config.VMMQEMU: h.drv},
	})
	if err != nil {
		cancel()
		h.t.Fatal(err)
	}
	fd := &fakeDaemon{Daemon: d, cancel: cancel}
	h.t.Cleanup(func() { h.close(fd) })
	return fd
}

// close shuts a daemon down as `banger daemon` does at SIGTERM. VMMs
// keep running.
func (h *fakeHost) close(d *fakeDaemon) {
	if d.closed {
		return
	}
	d.closed = true
	d.cancel()
	if err := d.Close(); err != nil {
		h.t.Errorf("close daemon: %v", err)
	}
}

// kill is a daemon killed at once: nothing unwinds, the kernel drops its
// state directory lock and database handle. Whatever the daemon was
// doing stays frozen (a Plan's Hold); release it with the returned func
// once the test is done with the next daemon.
func (h *fakeHost) kill(d *fakeDaemon) (release func()) {
	d.closed = true
	d.store.Close()
	d.lock.Close()
	return func() {
		d.cancel()
		d.ops.running.Wait()
	}
}

// create runs a create to its end.
func (h *fakeHost) create(d *fakeDaemon, name string) (store.VM, api.Operation) {
	h.t.Helper()
	id, err := d.CreateVM(context.Background(), api.CreateVMRequest{Name: name, Image: "base"})
	if err != nil {
		h.t.Fatalf("create %s: %v", name, err)
	}
	op := h.waitOp(d, id)
	vm, _ := d.store.GetVM(context.Background(), name)
	return vm, op
}

// mustCreate creates a running VM.
func (h *fakeHost) mustCreate(d *fakeDaemon, name string) store.VM {
	h.t.Helper()
	vm, op := h.create(d, name)
	if op.State != api.OpSucceeded {
		h.t.Fatalf("create %s: %s (stages %v)", name, op.Error, stageNames(op))
	}
	return vm
}

func (h *fakeHost) waitOp(d *fakeDaemon, id string) api.Operation {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, stop, err := d.ops.watch(ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	defer stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				h.t.Fatalf("operation %s: events ended without a result", id)
			}
			if ev.Done && ev.Operation != nil {
				return *ev.Operation
			}
		case <-ctx.Done():
			h.t.Fatalf("operation %s did not finish", id)
		}
	}
}

func stageNames(op api.Operation) []string {
	var names []string
	for _, s := range op.Stages {
		names = append(names, s.Name+"="+s.State)
	}
	return names
}

// failedStage is the stage an operation failed in.
func failedStage(op api.Operation) string {
	for _, s := range op.Stages {
		if s.State == api.OpFailed {
			return s.Name
		}
	}
	return ""
}

// noTrace checks that a failed create left nothing: no row, no VM
// directory (disks, keys, seed), no running VMM, no cached agent, no
// lease, no name reservation.
func (h *fakeHost) noTrace(d *fakeDaemon, name string) {
	h.t.Helper()
	ctx := context.Background()
	if vm, err := d.store.GetVM(ctx, name); !errors.Is(err, store.ErrNotFound) {
		h.t.Errorf("row of %s left: %+v (%v)", name, vm, err)
	}
	if ents, _ := os.ReadDir(d.layout.VMsDir); len(ents) != 0 {
		h.t.Errorf("VM directories left: %v", ents)
	}
	if live := h.drv.Live(); len(live) != 0 {
		h.t.Errorf("VMMs still running: %v", live)
	}
	if ls, err := d.store.ListLeases(ctx); err != nil || len(ls) != 0 {
		h.t.Errorf("leases left: %v %v", ls, err)
	}
	if d.isCreating(name) {
		h.t.Errorf("the name %s is still reserved", name)
	}
	// A failure after the agent answered (services) drops its client:
	// nothing of the VM stays in the cache.
	d.mu.Lock()
	n := len(d.agents)
	d.mu.Unlock()
	if n != 0 {
		h.t.Errorf("%d agent sessions left in the cache", n)
	}
}

// agentAnswers checks that the daemon reaches vm's guest agent.
func agentAnswers(t *testing.T, d *fakeDaemon, vm store.VM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.agent(ctx, vm)
	if err != nil {
		t.Fatalf("agent of %s: %v", vm.Name, err)
	}
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("agent health of %s: %v", vm.Name, err)
	}
}

// has says whether calls holds want, in this order.
func has(calls []string, want ...string) bool {
	i := 0
	for _, c := range calls {
		if i < len(want) && c == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestFakeCreate(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	vm, op := h.create(d, "one")
	if op.State != api.OpSucceeded {
		t.Fatalf("create: %s", op.Error)
	}
	want := []string{"prepare=succeeded", "disks=succeeded", "seed=succeeded", "boot=succeeded", "agent=succeeded"}
	if got := stageNames(op); !slices.Equal(got, want) {
		t.Errorf("stages %v, want %v", got, want)
	}
	if vm.State != api.VMRunning || vm.PID == 0 || !h.drv.Alive(d.proc(vm)) {
		t.Errorf("vm %+v: not running on a live VMM", vm)
	}
	if vm.VMMStateJSON == "" {
		t.Error("the driver's state was not recorded")
	}
	if live := h.drv.Live(); !slices.Equal(live, []string{vm.ID}) {
		t.Errorf("live VMMs %v, want [%s]", live, vm.ID)
	}
	for _, f := range []string{paths.FileRootRaw, paths.FileWorkDisk, paths.FileSeedDisk, fileHostKey, paths.FileKnownHosts} {
		if _, err := os.Stat(filepath.Join(vm.Dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if ports, err := d.store.PortsForVM(context.Background(), vm.ID); err != nil || len(ports) != 2 {
		t.Errorf("ports %v %v, want ssh and opencode", ports, err)
	}
	agentAnswers(t, d, vm)
}

// Each stage of a create that fails unwinds everything the create made.
func TestFakeCreateFails(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	short := func(c *config.Config) { c.VM.BootTimeout.Duration = 300 * time.Millisecond }
	tests := []struct {
		name     string
		tweak    func(*config.Config)
		manifest string
		script   func(h *fakeHost)
		stage    string
		errHas   string
		starts   int
	}{
		{name: "root disk", stage: "disks", errHas: "create root disk: boom",
			script: func(h *fakeHost) { h.drv.RootDiskErr = boom }},
		{name: "work disk", stage: "disks", errHas: "format work disk",
			script: func(h *fakeHost) { h.run.On("mkfs.ext4 -q -F -L "+image.LabelWork, "", boom) }},
		{name: "seed disk", stage: "seed", errHas: "format seed disk",
			script: func(h *fakeHost) { h.run.On("mkfs.ext4 -q -F -L "+image.LabelSeed, "", boom) }},
		{name: "vmm start", stage: "boot", errHas: "boom", starts: 1,
			script: func(h *fakeHost) { h.drv.Plan(1, vmmfake.Plan{Err: boom}) }},
		{name: "vmm exits", stage: "agent", errHas: "exited during boot", starts: 1,
			script: func(h *fakeHost) { h.drv.Plan(1, vmmfake.Plan{Boot: vmmfake.BootExit}) }},
		// The console shows systemd: the boot failed, it did not hang,
		// and is not retried.
		{name: "agent silent", tweak: short, stage: "agent", errHas: "did not answer", starts: 1,
			script: func(h *fakeHost) { h.drv.Plan(1, vmmfake.Plan{Boot: vmmfake.BootStall}) }},
		// Nothing answers on the opencode port.
		{name: "services", tweak: func(c *config.Config) { c.VM.BootTimeout.Duration = hangTimeout }, manifest: `{"services":["opencode"]}`, stage: "services", errHas: "opencode did not answer", starts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newFakeHost(t, tt.tweak)
			if tt.script != nil {
				tt.script(h)
			}
			d := h.open()
			if tt.manifest != "" {
				h.img.Manifest = tt.manifest
				if err := d.store.UpdateImage(context.Background(), &h.img); err != nil {
					t.Fatal(err)
				}
			}
			_, op := h.create(d, "doomed")
			if op.State != api.OpFailed || failedStage(op) != tt.stage || !strings.Contains(op.Error, tt.errHas) {
				t.Fatalf("create: state %s, failed stage %q, error %q; want stage %q and %q (stages %v)",
					op.State, failedStage(op), op.Error, tt.stage, tt.errHas, stageNames(op))
			}
			if got := h.drv.Starts(); got != tt.starts {
				t.Errorf("%d VMM starts, want %d", got, tt.starts)
			}
			// A VMM that started had its driver's leftovers (a jail)
			// removed after it was stopped.
			if calls := h.drv.Calls(); tt.starts > 0 && tt.name != "vmm start" && !slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "remove ") }) {
				t.Errorf("driver leftovers not removed: calls %v", calls)
			}
			h.noTrace(d, "doomed")
		})
	}
}

// A create that loses its name to another VM while it waited fails in
// prepare, removes its own directory and leaves the other VM alone.
func TestFakeCreateFailsInPrepare(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	ctx := context.Background()
	unlock := d.lockVM("taken")
	id, err := d.CreateVM(ctx, api.CreateVMRequest{Name: "taken", Image: "base"})
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	other := store.VM{ID: "0the4001", Name: "taken", ImageID: h.img.ID, State: api.VMStopped, Dir: d.layout.VMDir("0the4001"),
		VMM: config.VMMQEMU, NetMode: config.NetUser, CPUs: 1, MemoryMiB: 256, Egress: "none", CreatedAt: time.Now()}
	err = d.store.CreateVM(ctx, &other)
	mkdirs(t, other.Dir)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	op := h.waitOp(d, id)
	if op.State != api.OpFailed || failedStage(op) != "prepare" || !strings.Contains(op.Error, "already exists") {
		t.Fatalf("create: %s in %q: %s", op.State, failedStage(op), op.Error)
	}
	if ents, _ := os.ReadDir(d.layout.VMsDir); len(ents) != 1 || ents[0].Name() != other.ID {
		t.Errorf("VM directories %v, want only %s", ents, other.ID)
	}
	if got, err := d.store.GetVM(ctx, "taken"); err != nil || got.ID != other.ID {
		t.Errorf("the other VM's row: %+v %v", got, err)
	}
	if h.drv.Starts() != 0 {
		t.Error("a VMM was started")
	}
}

// A guest that hangs silently in early boot is booted once more, and the
// retry is never silent.
func TestFakeBootRetry(t *testing.T) {
	t.Parallel()
	short := func(c *config.Config) { c.VM.BootTimeout.Duration = hangTimeout }

	t.Run("second boot works", func(t *testing.T) {
		t.Parallel()
		h := newFakeHost(t, short)
		h.drv.Plan(1, vmmfake.Plan{Boot: vmmfake.BootHang})
		d := h.open()
		vm, op := h.create(d, "hangs")
		if op.State != api.OpSucceeded {
			t.Fatalf("create: %s (%v)", op.Error, stageNames(op))
		}
		if h.drv.Starts() != 2 {
			t.Fatalf("%d VMM starts, want 2", h.drv.Starts())
		}
		if !slices.Contains(stageNames(op), "boot-retry=succeeded") || !strings.Contains(h.log.String(), "boot retried") {
			t.Errorf("the retry is not shown: stages %v", stageNames(op))
		}
		// The hung VMM was killed before the second one started; only
		// the second runs, and the row has its PID.
		calls := h.drv.Calls()
		if !has(calls, "start "+vm.ID, "kill "+vm.ID, "start "+vm.ID) {
			t.Errorf("calls %v", calls)
		}
		if live := h.drv.Live(); !slices.Equal(live, []string{vm.ID}) || !h.drv.Alive(d.proc(vm)) {
			t.Errorf("live %v; recorded VMM alive %v", live, h.drv.Alive(d.proc(vm)))
		}
		agentAnswers(t, d, vm)
	})

	t.Run("hangs twice", func(t *testing.T) {
		t.Parallel()
		h := newFakeHost(t, short)
		h.drv.Plan(1, vmmfake.Plan{Boot: vmmfake.BootHang})
		h.drv.Plan(2, vmmfake.Plan{Boot: vmmfake.BootHang})
		d := h.open()
		_, op := h.create(d, "hangs")
		if op.State != api.OpFailed || failedStage(op) != "agent" || !strings.Contains(op.Error, "did not answer within") {
			t.Fatalf("create: %s in %q: %s", op.State, failedStage(op), op.Error)
		}
		if h.drv.Starts() != 2 {
			t.Errorf("%d VMM starts, want 2: one retry, no more", h.drv.Starts())
		}
		h.noTrace(d, "hangs")
	})
}

// Stop's fallbacks: the agent's poweroff, then the ACPI button with the
// stop timeout, then a kill.
func TestFakeStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		force    bool
		script   func(h *fakeHost, vm store.VM)
		want     []string // calls, in order, after the create
		wantNone []string // calls that must not happen
	}{
		{name: "poweroff honoured", want: []string{"poweroff"}, wantNone: []string{"kill"}},
		{name: "poweroff ignored", script: func(h *fakeHost, _ store.VM) { h.drv.SetPoweroff(vmmfake.PoweroffIgnore) },
			want: []string{"poweroff", "acpi timeout=" + stopTimeout.String(), "kill"}},
		{name: "force", force: true, want: []string{"kill"}, wantNone: []string{"poweroff", "acpi"}},
		{name: "already dead", script: func(h *fakeHost, vm store.VM) { h.drv.Exit(vm.Dir) },
			wantNone: []string{"poweroff", "acpi", "kill"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newFakeHost(t, nil)
			d := h.open()
			vm := h.mustCreate(d, "one")
			if tt.script != nil {
				tt.script(h, vm)
			}
			before := len(h.drv.Calls())
			got, err := d.StopVM(context.Background(), "one", tt.force)
			if err != nil {
				t.Fatal(err)
			}
			rec, _ := d.store.GetVM(context.Background(), "one")
			if got.State != api.VMStopped || rec.State != api.VMStopped || rec.PID != 0 {
				t.Errorf("after stop: returned %s, recorded %s pid %d", got.State, rec.State, rec.PID)
			}
			if live := h.drv.Live(); len(live) != 0 {
				t.Errorf("VMM still runs: %v", live)
			}
			calls := h.drv.Calls()[before:]
			var want []string
			for _, w := range tt.want {
				verb, rest, _ := strings.Cut(w, " ")
				want = append(want, strings.TrimSpace(verb+" "+vm.ID+" "+rest))
			}
			if !has(calls, want...) {
				t.Errorf("calls %v, want %v in order", calls, want)
			}
			for _, n := range tt.wantNone {
				if slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, n+" ") }) {
					t.Errorf("calls %v include %s", calls, n)
				}
			}
			// Stopping a stopped VM does nothing.
			n := len(h.drv.Calls())
			if _, err := d.StopVM(context.Background(), "one", false); err != nil || len(h.drv.Calls()) != n {
				t.Errorf("second stop: %v, calls %v", err, h.drv.Calls()[n:])
			}
		})
	}

	// A VMM that survives the kill: the stop fails and says so, and the
	// VM is marked in error, not stopped.
	t.Run("unkillable", func(t *testing.T) {
		t.Parallel()
		h := newFakeHost(t, nil)
		h.drv.Plan(1, vmmfake.Plan{Unkillable: true})
		d := h.open()
		vm := h.mustCreate(d, "one")
		_, err := d.StopVM(context.Background(), "one", true)
		if err == nil || !strings.Contains(err.Error(), "did not exit") {
			t.Fatalf("stop: %v", err)
		}
		if rec, _ := d.store.GetVM(context.Background(), "one"); rec.State != api.VMError || rec.PID != vm.PID {
			t.Errorf("after a failed stop: %s pid %d", rec.State, rec.PID)
		}
		h.drv.Exit(vm.Dir)
	})
}

func TestFakeStartRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, func(c *config.Config) { c.VM.BootTimeout.Duration = hangTimeout })
	d := h.open()
	vm := h.mustCreate(d, "one")
	first := vm.PID
	if _, err := d.StopVM(ctx, "one", false); err != nil {
		t.Fatal(err)
	}

	vm, err := d.StartVM(ctx, "one", api.StartVMRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := d.store.GetVM(ctx, "one")
	if vm.State != api.VMRunning || rec.State != api.VMRunning || rec.PID == first || !h.drv.Alive(d.proc(rec)) {
		t.Fatalf("after start: %s, recorded %s pid %d (first %d)", vm.State, rec.State, rec.PID, first)
	}
	agentAnswers(t, d, rec)
	// Starting a running VM does nothing.
	if _, err := d.StartVM(ctx, "one", api.StartVMRequest{}); err != nil || h.drv.Starts() != 2 {
		t.Fatalf("start of a running VM: %v, %d starts", err, h.drv.Starts())
	}

	before := len(h.drv.Calls())
	vm, err = d.RestartVM(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != api.VMRunning || vm.PID == rec.PID || h.drv.Starts() != 3 || h.drv.Alive(d.proc(rec)) {
		t.Fatalf("after restart: %s pid %d (was %d), %d starts, old VMM alive %v", vm.State, vm.PID, rec.PID, h.drv.Starts(), h.drv.Alive(d.proc(rec)))
	}
	if !has(h.drv.Calls()[before:], "poweroff "+vm.ID, "start "+vm.ID) {
		t.Errorf("calls %v", h.drv.Calls())
	}
	agentAnswers(t, d, vm)

	// A start that fails leaves the VM stopped with the reason, and no
	// VMM behind: a refused start, then a guest whose agent never
	// answers (its VMM runs until the failed start stops it).
	if _, err := d.StopVM(ctx, "one", true); err != nil {
		t.Fatal(err)
	}
	h.drv.Plan(4, vmmfake.Plan{Err: errors.New("no kvm today")})
	h.drv.Plan(5, vmmfake.Plan{Boot: vmmfake.BootStall})
	for _, want := range []string{"no kvm today", "did not answer within"} {
		if _, err := d.StartVM(ctx, "one", api.StartVMRequest{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("start: %v, want %q", err, want)
		}
		rec, _ = d.store.GetVM(ctx, "one")
		if rec.State != api.VMStopped || !strings.Contains(rec.LastError, want) {
			t.Errorf("after a failed start: %s, last error %q", rec.State, rec.LastError)
		}
		if live := h.drv.Live(); len(live) != 0 {
			t.Errorf("VMMs left running: %v", live)
		}
	}
	if h.drv.Starts() != 5 {
		t.Errorf("%d starts, want 5", h.drv.Starts())
	}
}

func TestFakeDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, nil)
	d := h.open()
	vm := h.mustCreate(d, "one")
	keep := h.mustCreate(d, "two")
	if err := d.DeleteVM(ctx, "one", false); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.GetVM(ctx, "one"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("row left: %v", err)
	}
	if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
		t.Errorf("directory left: %v", err)
	}
	if ports, _ := d.store.PortsForVM(ctx, vm.ID); len(ports) != 0 {
		t.Errorf("ports left: %v", ports)
	}
	if h.drv.Alive(d.proc(vm)) || !has(h.drv.Calls(), "poweroff "+vm.ID, "remove "+vm.ID) {
		t.Errorf("VMM alive %v; calls %v", h.drv.Alive(d.proc(vm)), h.drv.Calls())
	}
	if _, err := d.getVM(ctx, "one"); err == nil {
		t.Error("deleted VM still found")
	}
	// The other VM is untouched.
	if live := h.drv.Live(); !slices.Equal(live, []string{keep.ID}) {
		t.Errorf("live VMMs %v, want [%s]", live, keep.ID)
	}
	if _, err := os.Stat(keep.Dir); err != nil {
		t.Error(err)
	}
}

// After a daemon restart, a VM whose VMM lives is re-adopted (agent
// included), one whose VMM died is marked stopped, and one whose PID now
// belongs to another process is marked stopped without that process
// being touched.
func TestFakeReconcile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, nil)
	d1 := h.open()
	live := h.mustCreate(d1, "live")
	dead := h.mustCreate(d1, "dead")
	recycled := h.mustCreate(d1, "recycled")
	h.close(d1)
	h.drv.Exit(dead.Dir)
	h.drv.Recycle(recycled.PID)
	before := len(h.drv.Calls())

	d2 := h.open()
	got, _ := d2.store.GetVM(ctx, "live")
	if got.State != api.VMRunning || got.PID != live.PID || got.PIDStartTime != live.PIDStartTime || got.VMMStateJSON != live.VMMStateJSON {
		t.Errorf("live VM after restart: %+v", got)
	}
	// Its agent is reconnected without anyone asking.
	for deadline := time.Now().Add(10 * time.Second); d2.cachedAgent(live.ID) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the adopted VM's agent was not reconnected")
		}
	}
	agentAnswers(t, d2, got)
	for _, name := range []string{"dead", "recycled"} {
		if got, _ := d2.store.GetVM(ctx, name); got.State != api.VMStopped {
			t.Errorf("%s after restart: %s", name, got.State)
		}
	}
	if !h.drv.PIDAlive(recycled.PID) {
		t.Error("the process that got the recycled PID was killed")
	}
	if calls := h.drv.Calls()[before:]; len(calls) != 0 {
		t.Errorf("reconcile asked the driver to %v", calls)
	}
	// The adopted VM is the daemon's like any other.
	if _, err := d2.StopVM(ctx, "live", false); err != nil || h.drv.Alive(d2.proc(live)) {
		t.Errorf("stop of the adopted VM: %v", err)
	}
	if _, err := d2.StartVM(ctx, "dead", api.StartVMRequest{}); err != nil {
		t.Errorf("start of the dead VM: %v", err)
	}
}

// spawnVMM starts a real process named like the VMM of vmID (see
// TestHelperFakeVMM), reaped when it dies.
func spawnVMM(t *testing.T, prefix, vmID string) (*exec.Cmd, error) {
	name := prefix + "-" + vmID
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFakeVMM$", "--", "-name", name+",process="+name)
	cmd.Env = append(os.Environ(), "BANGER_TEST_FAKE_VMM=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return cmd, nil
}

// A daemon killed after starting a VMM and before recording its PID:
// the next daemon finds the VMM by its name and stops it, and removes
// the half-made VM.
func TestFakeCrashBetweenStartAndRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, nil)
	d1 := h.open()
	hold := make(chan struct{})
	spawned := make(chan *exec.Cmd, 1)
	h.drv.Plan(1, vmmfake.Plan{Hold: hold, Spawn: func(spec vmm.Spec) (int, error) {
		cmd, err := spawnVMM(t, d1.layout.InstancePrefix(), spec.ID)
		if err != nil {
			return 0, err
		}
		spawned <- cmd
		return cmd.Process.Pid, nil
	}})
	if _, err := d1.CreateVM(ctx, api.CreateVMRequest{Name: "crashed", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	var vmmProc *exec.Cmd
	select {
	case vmmProc = <-spawned:
	case <-time.After(20 * time.Second):
		t.Fatal("the VMM was never started")
	}
	half, err := d1.store.GetVM(ctx, "crashed")
	if err != nil || half.State != api.VMCreating || half.PID != 0 {
		t.Fatalf("before the kill: %+v %v", half, err)
	}
	release := h.kill(d1)

	d2 := h.open()
	if alive(vmmProc) {
		t.Error("the orphaned VMM still runs")
	}
	if _, err := d2.store.GetVM(ctx, "crashed"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the half-made VM's row is still there: %v", err)
	}
	if _, err := os.Stat(half.Dir); !os.IsNotExist(err) {
		t.Errorf("the half-made VM's directory is still there: %v", err)
	}
	if out := h.log.String(); !strings.Contains(out, fmt.Sprintf(`vmm_processes=1 vmm_names="%s(pid`, half.ID)) {
		t.Errorf("the sweep does not report the VMM:\n%s", out)
	}
	close(hold)
	release()
	// The name is free again on the new daemon.
	h.mustCreate(d2, "crashed")
}

// A daemon killed after recording the VMM's PID but before the VM is
// running (its guest still booting): the next daemon stops that VMM
// through the driver and removes the half-made VM.
func TestFakeCrashDuringBoot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, nil)
	h.drv.Plan(1, vmmfake.Plan{Boot: vmmfake.BootHang})
	d1 := h.open()
	if _, err := d1.CreateVM(ctx, api.CreateVMRequest{Name: "crashed", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	var half store.VM
	for deadline := time.Now().Add(20 * time.Second); half.PID == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the VMM's PID was never recorded")
		}
		half, _ = d1.store.GetVM(ctx, "crashed")
	}
	if half.State != api.VMCreating || !h.drv.Alive(d1.proc(half)) {
		t.Fatalf("before the kill: %+v", half)
	}
	release := h.kill(d1)
	defer release()

	d2 := h.open()
	if h.drv.Alive(d2.proc(half)) || !slices.Contains(h.drv.Calls(), "kill "+half.ID) {
		t.Errorf("the interrupted create's VMM was not stopped: calls %v", h.drv.Calls())
	}
	if _, err := d2.store.GetVM(ctx, "crashed"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the half-made VM's row is still there: %v", err)
	}
	if _, err := os.Stat(half.Dir); !os.IsNotExist(err) {
		t.Errorf("the half-made VM's directory is still there: %v", err)
	}
}
