package daemon

// A VM's create and boot are ordered lists of named steps, in the way of
// firecracker-go-sdk's handler lists: createSteps and bootSteps read as
// what happens, in order, and each step runs as the operation stage of
// its name, which is what the CLI prints. The first failing step ends the
// run; what the steps made is undone by the run's cleanup stack, in
// reverse order, by whoever owns the stack (createVM, StartVM, a derive).

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// step is one named stage of a VM's create or boot.
type step struct {
	// name is the stage name the CLI prints.
	name string
	// skip leaves the step out of a run, unannounced (nil: never).
	skip func(r *vmRun) bool
	fn   func(ctx context.Context, r *vmRun) error
}

// vmRun is what the steps of one create or boot share.
type vmRun struct {
	vm   *store.VM
	img  store.Image
	undo *cleanup
	// persist marks a real VM: its row is kept up to date and its seed
	// disk carries the user's auth files. Provisioning and verify VMs
	// have neither.
	persist bool
	// jailer says --jailer was asked for.
	jailer bool
	// req is the create request (create only).
	req api.CreateVMRequest
	// spec and proc are the VMM's, once the boot step made them.
	spec vmm.Spec
	proc vmm.Process
	// retried says the boot was retried once already.
	retried bool
	// restore starts the VMM from saved state instead of booting;
	// snap is the snapshot a new VM is made from; newIdentity gives a
	// restored guest the VM's own name, keys and machine id.
	restore     *vmm.Restore
	snap        *store.Snapshot
	newIdentity bool
}

// Stage names the run itself announces.
const (
	// stageSeed is the first boot step, where a retried boot resumes.
	stageSeed = "seed"
	// stageBootRetry marks a retried boot in the operation record.
	stageBootRetry = "boot-retry"
)

// createSteps make a VM and boot it.
func (d *Daemon) createSteps() []step {
	return slices.Concat([]step{
		{name: "prepare", fn: d.createPrepare},
		{name: "disks", fn: d.createDisks},
		{name: "network", skip: userNet, fn: d.createNetwork},
	}, d.bootSteps(), []step{
		{name: "services", skip: noServiceWait, fn: d.withConsoleTail(d.createServices)},
	})
}

// bootSteps boot a VM whose disks exist: a fresh seed disk, the VMM,
// the guest agent.
func (d *Daemon) bootSteps() []step {
	return []step{
		{name: stageSeed, fn: d.bootSeed},
		{name: "boot", fn: d.bootVMM},
		{name: "agent", fn: d.withConsoleTail(d.bootAgent)},
	}
}

func userNet(r *vmRun) bool { return !isTap(*r.vm) }

// runSteps runs steps in order, each as the stage of its name, and stops
// at the first failure. A step failing with vmm.ErrEarlyHang sends the
// run back once to the seed step: under TCG about one boot in ten stalls
// in early kernel init and the next identical boot is fine (FACTS.md,
// "TCG boots can hang").
func (d *Daemon) runSteps(ctx context.Context, stage stageFunc, r *vmRun, steps []step) error {
	for i := 0; i < len(steps); i++ {
		s := steps[i]
		if s.skip != nil && s.skip(r) {
			continue
		}
		err := stage(s.name, func(ctx context.Context) error { return s.fn(ctx, r) })
		if err == nil {
			continue
		}
		from := slices.IndexFunc(steps, func(s step) bool { return s.name == stageSeed })
		if r.retried || ctx.Err() != nil || !errors.Is(err, vmm.ErrEarlyHang) || from < 0 || from > i {
			return err
		}
		d.retryBoot(ctx, stage, r, err)
		i = from - 1
	}
	return nil
}

// retryBoot stops a hung VMM before its boot runs again. A retry is
// never silent: the log line (msg "boot retried", which the test
// harness counts) and a boot-retry stage in the operation record say
// that this VM needed a second boot, so an intermittent boot regression
// shows up instead of hiding behind the retry.
func (d *Daemon) retryBoot(ctx context.Context, stage stageFunc, r *vmRun, first error) {
	r.retried = true
	d.log.Warn("boot retried", "vm", r.vm.Name, "reason", "hung in early kernel init (no systemd on the console)", "first_error", first.Error())
	_ = stage(stageBootRetry, func(context.Context) error { return nil })
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	_ = d.driverFor(*r.vm).Stop(sctx, r.vm.Dir, r.proc, true, 0)
}

// withConsoleTail makes a step's failure carry the tail of the VM's
// console.
func (d *Daemon) withConsoleTail(fn func(context.Context, *vmRun) error) func(context.Context, *vmRun) error {
	return func(ctx context.Context, r *vmRun) error {
		if err := fn(ctx, r); err != nil {
			return d.withConsole(r.vm.Dir, err)
		}
		return nil
	}
}

// hangError is an agent that never answered, judged an early hang.
type hangError struct{ err error }

func (e *hangError) Error() string   { return e.err.Error() }
func (e *hangError) Unwrap() []error { return []error{e.err, vmm.ErrEarlyHang} }

// earlyHang judges a boot whose agent never answered: the console is
// quiet on a good boot too, so a hang is told apart only from a boot
// whose console shows systemd at work (that one failed, it did not
// hang).
func earlyHang(dir string, err error) error {
	console, _ := os.ReadFile(filepath.Join(dir, paths.FileConsoleLog))
	if strings.Contains(string(console), "systemd") {
		return err
	}
	return &hangError{err}
}
