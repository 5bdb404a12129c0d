// Package vmmfake is a VMM driver for tests. Its VMMs are bookkeeping,
// not processes: Start records a "process" (a PID no real process can
// have, and a start time), the guest agent is served in-process over a
// pipe, and nothing boots. Each test scripts what the VMM and its guest
// do: which Start fails, which guest hangs early, whether a poweroff
// request is honoured, when a VMM dies or its PID is recycled.
//
// Everything a test can script is in Plan and the Driver's methods
// below it; the vmm.Driver methods follow.
package vmmfake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Boot is what a guest does once its VMM runs.
type Boot int

const (
	// BootOK: the guest agent answers.
	BootOK Boot = iota
	// BootHang: the guest hangs silently in early kernel init (the TCG
	// hang the daemon retries once): the VMM runs, the console stays
	// empty, the agent never answers.
	BootHang
	// BootStall: the guest gets as far as systemd (the console says so)
	// and the agent never answers: a failed boot, not an early hang.
	BootStall
	// BootExit: the VMM exits during boot.
	BootExit
)

// Poweroff is how a guest treats `systemctl poweroff` sent through its
// agent.
type Poweroff int

const (
	// PoweroffHonour: the guest shuts down and the VMM exits.
	PoweroffHonour Poweroff = iota
	// PoweroffIgnore: the command succeeds and nothing happens.
	PoweroffIgnore
)

// stallConsole is what a stalled guest prints.
const stallConsole = "[    1.234567] systemd[1]: Reached target basic.target.\n"

// Plan is what one Start call does. The zero Plan starts a VMM whose
// guest answers.
type Plan struct {
	// Err fails Start with this error; nothing is left running.
	Err error
	// Boot is what the guest does.
	Boot Boot
	// Console is written to the VM's console log at start.
	Console string
	// Hold, when set, keeps Start from returning, with the VMM already
	// running, until it is closed or ctx ends: a daemon killed between
	// starting a VMM and recording it.
	Hold <-chan struct{}
	// Unkillable makes the VMM survive Stop's kill (a process stuck in
	// the kernel); Exit still ends it.
	Unkillable bool
	// Spawn, when set, makes this VMM a real process the test starts
	// (named like a VMM, so that a daemon's /proc sweep finds it) and
	// returns the PID of. Alive then asks /proc, and a kill is SIGKILL.
	Spawn func(spec vmm.Spec) (int, error)
}

// Driver is a scriptable vmm.Driver. One Driver stands for the host's
// processes: give the same one to a daemon and to the daemon that
// replaces it, and the second finds the first one's VMMs.
type Driver struct {
	// Base supplies the boot defaults (a raw copy of the root disk, the
	// image's kernel, no host checks); the fake only scripts the
	// lifecycle.
	vmm.Base
	// DriverName is what Name reports ("fake" when empty).
	DriverName string
	// MaxWait caps how long Stop waits for a guest to power off after
	// the ACPI button (the daemon asks for tens of seconds; the fake
	// guest ignores the button; only a poweroff already under way ends
	// the wait early). Zero means 500ms.
	MaxWait time.Duration
	// RootDiskErr, when set, fails MakeRootDisk (a full disk, a broken
	// image) before anything is written.
	RootDiskErr error
	// Log receives the fake guest agents' logs (nil: discarded).
	Log *slog.Logger
	// SaveErr fails Save (after the VMM was paused: it ends anyway).
	SaveErr error
	// Compat overrides SnapshotCompat.
	Compat string

	mu       sync.Mutex
	plans    map[int]Plan
	starts   int
	lastPID  int
	procs    map[int]*proc    // by PID
	current  map[string]*proc // by VM directory: its latest VMM
	calls    []string
	poweroff Poweroff
	agent    *agent.Server
}

// proc is one fake VMM process.
type proc struct {
	pid   int
	start uint64
	id    string // the VM's id (vmm.Spec.ID)
	dir   string
	boot  Boot
	// real is a process the test started (Plan.Spawn).
	real       bool
	unkillable bool
	exited     bool
	// guest ends the guest's agent sessions when the VMM exits.
	guest context.Context
	stop  context.CancelFunc
	// sess is the guest end of the latest agent session.
	sess *yamux.Session
}

// firstPID is above Linux's largest pid_max (2^22): no real process
// has a fake VMM's PID, so nothing done to one by mistake hits a real one.
const firstPID = 1<<22 + 1000

var _ vmm.Driver = (*Driver)(nil)

// Info implements vmm.Driver: a VMM that runs without KVM, has user
// networking and writes console.log itself, as the daemon's tests need;
// its VMMs are not processes, so there is no user to run them as.
func (f *Driver) Info() vmm.Info {
	return vmm.Info{Title: "fake VMM", Emulates: true, UserNet: true, Console: vmm.ConsoleFile, OwnUser: vmm.OwnUserNever}
}

// MakeRootDisk implements vmm.Booter: Base's raw copy, or RootDiskErr.
func (f *Driver) MakeRootDisk(ctx context.Context, r system.Runner, img vmm.Image, root vmm.Disk) error {
	if f.RootDiskErr != nil {
		return fmt.Errorf("create root disk: %w", f.RootDiskErr)
	}
	return f.Base.MakeRootDisk(ctx, r, img, root)
}

// Status implements vmm.Adopter: what a control socket would say.
func (f *Driver) Status(_ context.Context, dir string, p vmm.Process) (string, error) {
	if !f.Alive(p) {
		return "", fmt.Errorf("fake VMM %d is not running", p.PID)
	}
	return "running", nil
}

// Plan sets what the nth Start call (counting from 1, over all VMs)
// does.
func (f *Driver) Plan(n int, p Plan) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.plans == nil {
		f.plans = map[int]Plan{}
	}
	f.plans[n] = p
}

// SetPoweroff sets how guests treat a poweroff request from now on.
func (f *Driver) SetPoweroff(p Poweroff) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.poweroff = p
}

// Exit makes the VMM of the VM in dir exit (a crash, or a guest that
// powered itself off), as if it died while nobody watched.
func (f *Driver) Exit(dir string) {
	f.mu.Lock()
	p := f.current[dir]
	f.mu.Unlock()
	if p != nil {
		f.exit(p)
	}
}

// Recycle makes pid, a fake VMM's, belong to another process: the VMM
// exited and an unrelated process with a later start time got its PID.
// That process lives on; a daemon that takes it for the VMM and stops it
// shows up in Calls as a kill of "recycled".
func (f *Driver) Recycle(pid int) {
	f.mu.Lock()
	p := f.procs[pid]
	f.mu.Unlock()
	if p == nil {
		return
	}
	f.exit(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	guest, stop := context.WithCancel(context.Background())
	f.procs[pid] = &proc{pid: pid, start: p.start + 1, id: "recycled", guest: guest, stop: stop}
}

// Starts is how many times Start was called.
func (f *Driver) Starts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts
}

// Calls is what the driver was asked to do, in order: "start ID",
// "acpi ID timeout=30s", "kill ID", "poweroff ID" (through the guest
// agent), "remove ID".
func (f *Driver) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Live lists the VM ids whose VMM runs.
func (f *Driver) Live() []string {
	f.mu.Lock()
	procs := make([]*proc, 0, len(f.procs))
	for _, p := range f.procs {
		procs = append(procs, p)
	}
	f.mu.Unlock()
	var ids []string
	for _, p := range procs {
		if f.running(p) {
			ids = append(ids, p.id)
		}
	}
	slices.Sort(ids)
	return ids
}

// PIDAlive says whether a process runs with pid, whatever its start
// time.
func (f *Driver) PIDAlive(pid int) bool {
	f.mu.Lock()
	p := f.procs[pid]
	f.mu.Unlock()
	return p != nil && f.running(p)
}

func (f *Driver) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *Driver) running(p *proc) bool {
	if p.real {
		return system.ProcAlive(p.pid, p.start)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return !p.exited
}

// exit ends p and its guest's agent sessions.
func (f *Driver) exit(p *proc) {
	if p.real {
		if err := syscall.Kill(p.pid, syscall.SIGKILL); err == nil {
			vmm.WaitGone(context.Background(), f.Alive, vmm.Process{PID: p.pid, StartTime: p.start}, 5*time.Second)
		}
	}
	f.mu.Lock()
	p.exited = true
	f.mu.Unlock()
	p.stop()
}

func (f *Driver) maxWait() time.Duration {
	if f.MaxWait > 0 {
		return f.MaxWait
	}
	return 500 * time.Millisecond
}

// Name implements vmm.Driver.
func (f *Driver) Name() string {
	if f.DriverName == "" {
		return "fake"
	}
	return f.DriverName
}

// Start implements vmm.Driver: it follows the Plan of this call.
func (f *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	f.mu.Lock()
	f.starts++
	plan := f.plans[f.starts]
	f.calls = append(f.calls, "start "+spec.ID)
	f.mu.Unlock()
	if plan.Err != nil {
		return vmm.Process{}, plan.Err
	}
	if err := f.restoreCheck(spec); err != nil {
		return vmm.Process{}, fmt.Errorf("restore from %s: %w", spec.Restore.Dir, err)
	}
	// A real VMM refuses to start without its disks.
	for _, d := range spec.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return vmm.Process{}, fmt.Errorf("open disk: %w", err)
		}
	}
	console := plan.Console
	if plan.Boot == BootStall && console == "" {
		console = stallConsole
	}
	if console != "" {
		if err := appendFile(filepath.Join(spec.Dir, paths.FileConsoleLog), console); err != nil {
			return vmm.Process{}, fmt.Errorf("write console: %w", err)
		}
	}
	guest, stop := context.WithCancel(context.Background())
	p := &proc{id: spec.ID, dir: spec.Dir, boot: plan.Boot, unkillable: plan.Unkillable, guest: guest, stop: stop}
	if plan.Spawn != nil {
		pid, err := plan.Spawn(spec)
		if err != nil {
			stop()
			return vmm.Process{}, err
		}
		st, err := system.ProcStartTime(pid)
		if err != nil {
			stop()
			return vmm.Process{}, fmt.Errorf("start time of %d: %w", pid, err)
		}
		p.pid, p.start, p.real = pid, st, true
	}
	f.mu.Lock()
	if !p.real {
		if f.lastPID == 0 {
			f.lastPID = firstPID
		}
		f.lastPID++
		p.pid, p.start = f.lastPID, uint64(time.Now().UnixNano())
	}
	if f.procs == nil {
		f.procs, f.current = map[int]*proc{}, map[string]*proc{}
	}
	f.procs[p.pid] = p
	f.current[spec.Dir] = p
	f.mu.Unlock()
	if plan.Boot == BootExit {
		f.exit(p)
	}
	if plan.Hold != nil {
		select {
		case <-plan.Hold:
		case <-ctx.Done():
		}
	}
	return vmm.Process{PID: p.pid, StartTime: p.start, State: fmt.Sprintf(`{"fake_id":%q}`, spec.ID)}, nil
}

// Stop implements vmm.Driver the way the real drivers do: the ACPI power
// button (which the fake guest ignores, as Debian minbase without logind
// does), a wait, then a kill.
func (f *Driver) Stop(ctx context.Context, dir string, p vmm.Process, force bool, timeout time.Duration) error {
	if !f.Alive(p) {
		return nil
	}
	f.mu.Lock()
	fp := f.procs[p.PID]
	f.mu.Unlock()
	if !force {
		f.record("acpi %s timeout=%s", fp.id, timeout)
		if vmm.WaitGone(ctx, f.Alive, p, min(timeout, f.maxWait())) {
			return nil
		}
	}
	f.record("kill %s", fp.id)
	if !fp.unkillable {
		f.exit(fp)
	}
	if f.Alive(p) {
		return fmt.Errorf("vmm %d did not exit after SIGKILL", p.PID)
	}
	return nil
}

// Alive implements vmm.Driver: the PID runs and has the start time p
// recorded.
func (f *Driver) Alive(p vmm.Process) bool {
	f.mu.Lock()
	fp := f.procs[p.PID]
	f.mu.Unlock()
	return fp != nil && fp.start == p.StartTime && f.running(fp)
}

// Remove implements vmm.Remover: the fake keeps nothing outside the VM
// directory, it only records the call.
func (f *Driver) Remove(_ context.Context, dir string, p vmm.Process) error {
	id := filepath.Base(dir)
	f.record("remove %s", id)
	return nil
}

// errRefused is a dial to the agent channel of a VMM that is not running.
var errRefused = errors.New("connection refused")

func appendFile(path, s string) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = fh.WriteString(s)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}
