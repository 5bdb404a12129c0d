package daemon

// The image engine: build (debootstrap, Void, derived), verify, import,
// export, register, promote and delete images. It holds the store, the
// layout and the operations engine; what it needs from the VM side (a
// throwaway VM booted from an image directory, its agent, its driver)
// and the host checks a job passes before it starts are small interfaces
// the daemon implements, so the engine never holds the whole *Daemon.

import (
	"context"
	"log/slog"
	"sync"

	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// imageVMs is what the image engine needs from the VM engine: verify and
// derive boot an image in a throwaway VM with no record, talk to its
// agent and stop it through its driver.
type imageVMs interface {
	makeWorkDisk(ctx context.Context, img store.Image, dir string, size int64) (string, error)
	accelFor(ctx context.Context, img store.Image) accelChoice
	boot(ctx context.Context, vm *store.VM, img store.Image, stage stageFunc, undo *cleanup, persist, jailer bool) (vmm.Process, error)
	cachedAgent(vmID string) *agentclient.Client
	dropAgent(vmID string)
	driverFor(vm store.VM) vmm.Driver
	// makeReadySnapshot boots the image and saves its ready snapshot.
	makeReadySnapshot(ctx context.Context, stage stageFunc, img store.Image) error
	// dropSnapshotsOf removes the image's ready snapshot when nothing
	// stands on it.
	dropSnapshotsOf(ctx context.Context, img store.Image) error
}

// imageChecks are the host checks an image job passes: the tools it
// needs (preflight) and free space, before it starts and while a guest
// streams into the image directory.
type imageChecks interface {
	preflight(ctx context.Context, which int) error
	checkBuildSpace(base bool) error
	checkVoidSpace(spec image.VoidSpec) error
	checkDeriveSpace(base store.Image) error
	checkImportSpace(src string) error
	checkFree(op, dir string, need uint64) error
	spaceGuard(op, dir string) *system.SpaceGuard
	guestStreamMax() int64
}

var (
	_ imageVMs    = (*Daemon)(nil)
	_ imageChecks = (*Daemon)(nil)
)

// imageDeps is what the image engine needs from the daemon.
type imageDeps struct {
	store  *store.Store
	layout paths.Layout
	cfg    config.Config
	log    *slog.Logger
	runner system.Runner
	// ops runs builds and verifies in the background.
	ops    *operations
	vms    imageVMs
	checks imageChecks
	// builds lets one image build run at a time; it outlives the engine
	// value (the daemon keeps it).
	builds *buildGate
	// verifyHook, when set, replaces the verification boot (tests).
	verifyHook verifyBootFunc
}

// imageEngine manages images. Its values are cheap: the daemon makes one
// per use over its own state.
type imageEngine struct {
	imageDeps
}

func newImageEngine(deps imageDeps) *imageEngine {
	return &imageEngine{imageDeps: deps}
}

// imageEngine builds the daemon's image engine over its state.
func (d *Daemon) imageEngine() *imageEngine {
	return newImageEngine(imageDeps{
		store:      d.store,
		layout:     d.layout,
		cfg:        d.cfg,
		log:        d.log,
		runner:     d.runner,
		ops:        d.ops,
		vms:        d,
		checks:     d,
		builds:     &d.building,
		verifyHook: d.verifyHook,
	})
}

// buildGate admits one image build at a time.
type buildGate struct {
	mu      sync.Mutex
	running bool
}

// acquire reports whether the caller may build; it must release after.
func (g *buildGate) acquire() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running {
		return false
	}
	g.running = true
	return true
}

func (g *buildGate) release() {
	g.mu.Lock()
	g.running = false
	g.mu.Unlock()
}
