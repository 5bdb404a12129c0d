package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Guest ports forwarded to 127.0.0.1 for the VM's whole life.
const (
	guestSSHPort      = 22
	guestOpencodePort = 4096
)

// File names in a VM directory that only the daemon uses.
const (
	fileHostKey = "ssh_host_ed25519_key"
	fileHostPub = "ssh_host_ed25519_key.pub"
	dirSeed     = "seed"
)

// cleanup is a LIFO stack of undo steps: a failed create or boot unwinds
// everything it made, in reverse order.
type cleanup []func()

func (c *cleanup) push(f func()) { *c = append(*c, f) }
func (c *cleanup) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

// validateCreate checks a create request and fills defaults. Everything
// here fails before any resource exists.
func (d *Daemon) validateCreate(ctx context.Context, req *api.CreateVMRequest) (store.Image, error) {
	if req.Name == "" {
		req.Name = d.generateName(ctx)
	}
	if err := api.ValidateName("VM", req.Name); err != nil {
		return store.Image{}, err
	}
	d.defaultSizes(req)
	if req.CPUs < 1 || req.CPUs > 64 {
		return store.Image{}, api.Errorf(api.CodeInvalid, "choose --cpus between 1 and 64", "impossible vCPU count %d", req.CPUs)
	}
	if total := hostMemoryMiB(); req.MemoryMiB < 128 || (total > 0 && req.MemoryMiB > total) {
		return store.Image{}, api.Errorf(api.CodeInvalid, fmt.Sprintf("choose --memory between 128 and %d MiB (this host's memory)", total), "impossible memory size %d MiB", req.MemoryMiB)
	}
	if req.DiskGiB < 1 || req.DiskGiB > 2048 {
		return store.Image{}, api.Errorf(api.CodeInvalid, "choose --disk between 1 and 2048 GiB", "impossible work disk size %d GiB", req.DiskGiB)
	}
	mode, policy, err := resolveEgress(d.cfg, req)
	if err != nil {
		return store.Image{}, err
	}
	req.Egress, req.EgressPolicy = mode, policy
	if err := d.netEngine().validateNet(ctx, req); err != nil {
		return store.Image{}, err
	}
	if _, err := d.store.GetVM(ctx, req.Name); err == nil {
		return store.Image{}, api.Errorf(api.CodeConflict, fmt.Sprintf("pick another name, or remove the old VM with `banger vm delete %s`", req.Name), "a VM named %q already exists", req.Name)
	}
	img, err := d.resolveImage(ctx, req.Image)
	if err != nil {
		return store.Image{}, err
	}
	if err := d.resolveVMM(ctx, req, img); err != nil {
		return store.Image{}, err
	}
	if err := d.preflight(ctx, checksForCreate); err != nil {
		return store.Image{}, err
	}
	if err := d.checkCreateSpace(img, req.VMM); err != nil {
		return store.Image{}, err
	}
	return img, nil
}

// defaultSizes fills the sizes a create leaves out from the config.
func (d *Daemon) defaultSizes(req *api.CreateVMRequest) {
	if req.CPUs == 0 {
		req.CPUs = d.cfg.VM.CPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = d.cfg.VM.MemoryMiB
	}
	if req.DiskGiB == 0 {
		req.DiskGiB = d.cfg.VM.DiskGiB
	}
}

func (d *Daemon) resolveImage(ctx context.Context, name string) (store.Image, error) {
	if name == "" {
		img, err := d.store.DefaultImage(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return img, api.Errorf(api.CodeNotFound, "build one with `banger image build` (or import one with `banger image import DIR`)", "no image yet")
		}
		return img, err
	}
	img, err := d.store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return img, api.Errorf(api.CodeNotFound, "see `banger image list`", "unknown image %q", name)
	}
	return img, err
}

var nameWords = [2][]string{
	{"brisk", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky", "merry", "nimble", "plucky", "quiet", "rapid", "sunny", "witty"},
	{"otter", "falcon", "badger", "heron", "lynx", "marten", "newt", "osprey", "panda", "quail", "raven", "stoat", "tapir", "vole", "wren", "yak"},
}

func (d *Daemon) generateName(ctx context.Context) string {
	for range 50 {
		n := fmt.Sprintf("%s-%s-%d", nameWords[0][rand.IntN(16)], nameWords[1][rand.IntN(16)], rand.IntN(100))
		if _, err := d.store.GetVM(ctx, n); errors.Is(err, store.ErrNotFound) && !d.isCreating(n) {
			return n
		}
	}
	return "vm-" + newID(3)
}

func (d *Daemon) isCreating(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.creating[name]
}

// CreateVM validates at once (so bad input fails synchronously with a
// clear error) and runs the rest as an operation.
func (d *Daemon) CreateVM(ctx context.Context, req api.CreateVMRequest) (string, error) {
	// A create restores from a snapshot when asked (--snapshot), and
	// from the image's ready snapshot unless --cold or it cannot
	// (coldWhy says why, in a "cold" stage).
	var snap *store.Snapshot
	coldWhy, stale := "", false
	explicit := req.Snapshot != ""
	switch {
	case explicit && req.Cold:
		return "", api.Errorf(api.CodeInvalid, "pass one of them", "--snapshot and --cold contradict each other")
	case explicit:
		s, err := d.snapshotForCreate(ctx, &req)
		if err != nil {
			return "", err
		}
		snap = &s
	case !req.Cold:
		snap, coldWhy, stale = d.readySnapshotFor(ctx, &req)
	}
	img, err := d.validateCreate(ctx, &req)
	if err != nil {
		return "", err
	}
	if snap != nil {
		if why := guestFits(*snap, req); why != "" {
			if explicit {
				return "", api.Errorf(api.CodeInvalid, "create it the way the snapshot's VM was made, or without --snapshot", "%s", why)
			}
			snap, coldWhy, req.Snapshot = nil, why, ""
		}
	}
	d.mu.Lock()
	if d.creating[req.Name] {
		d.mu.Unlock()
		return "", api.Errorf(api.CodeConflict, "wait for it with `banger op watch`, or choose another name", "VM %q is being created right now", req.Name)
	}
	d.creating[req.Name] = true
	d.mu.Unlock()
	id, err := d.ops.start(ctx, "vm.create", req.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		defer func() {
			d.mu.Lock()
			delete(d.creating, req.Name)
			d.mu.Unlock()
		}()
		// Images made by an older banger get their fingerprint and
		// manifest now, once, without a rebuild.
		if needsHeal(img) {
			err := stage("heal", func(ctx context.Context) error {
				healed, err := d.imageEngine().healImage(ctx, img)
				img = healed
				return err
			})
			if err != nil {
				return nil, err
			}
		}
		if coldWhy != "" {
			// The reason is in the stage's name: the stage is over
			// before a client watching the operation has subscribed,
			// and names are replayed where output is not.
			_ = stage("cold: "+coldWhy, func(ctx context.Context) error { return nil })
		}
		vm, err := d.createVM(ctx, req, img, snap, stage)
		if err != nil {
			return nil, err
		}
		if stale {
			d.rebuildReady(img)
		}
		return d.vmView(ctx, vm), nil
	})
	if err != nil {
		d.mu.Lock()
		delete(d.creating, req.Name)
		d.mu.Unlock()
	}
	return id, err
}

// createVM makes and boots a VM: createSteps, with the undo of every step
// that ran when one fails.
func (d *Daemon) createVM(ctx context.Context, req api.CreateVMRequest, img store.Image, snap *store.Snapshot, stage stageFunc) (vm store.VM, err error) {
	unlock := d.lockVM(req.Name)
	defer unlock()
	var undo cleanup
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	vmID := newID(4)
	vm = store.VM{
		ID: vmID, Name: req.Name, ImageID: img.ID, State: api.VMCreating,
		CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, WorkDiskBytes: int64(req.DiskGiB) << 30,
		Egress: req.Egress, NetMode: req.Net, Dir: d.layout.VMDir(vmID), CreatedAt: time.Now().UTC(),
		VMM: req.VMM, EgressPolicy: req.EgressPolicy, EgressAllow: req.Allow, Credentials: req.Credentials,
	}
	r := &vmRun{vm: &vm, img: img, undo: &undo, persist: true, jailer: req.Jailer, req: req}
	steps := d.createSteps()
	if snap != nil {
		// A VM made from a snapshot continues it: its disks are
		// overlays on the snapshot's layers, its VMM loads the saved
		// state, its guest then becomes this VM.
		vm.SnapshotID, vm.Accel = snap.ID, snap.Accel
		r.snap, r.newIdentity = snap, true
		r.restore = &vmm.Restore{Dir: filepath.Join(snap.Dir, snapDirVMM), Share: true}
		steps = d.restoreCreateSteps()
	}
	err = d.runSteps(ctx, stage, r, steps)
	return vm, err
}

// createPrepare makes the VM directory, its row, host key and ports (or
// its network lease).
func (d *Daemon) createPrepare(ctx context.Context, r *vmRun) error {
	vm, undo, dir := r.vm, r.undo, r.vm.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create vm dir: %w", err)
	}
	undo.push(func() { os.RemoveAll(dir) })
	if err := d.store.CreateVM(ctx, vm); err != nil {
		if errors.Is(err, store.ErrExists) {
			return api.Errorf(api.CodeConflict, "pick another name", "a VM named %q already exists", vm.Name)
		}
		return fmt.Errorf("record vm: %w", err)
	}
	vmID := vm.ID
	undo.push(func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = d.store.DeleteVM(dctx, vmID)
	})
	priv, pub, err := sshkeys.GenerateEd25519()
	if err != nil {
		return fmt.Errorf("generate host key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, fileHostKey), priv, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, fileHostPub), pub, 0o644); err != nil {
		return err
	}
	if err := sshkeys.WriteKnownHosts(filepath.Join(dir, paths.FileKnownHosts), hostKeyAlias(vm.Name), pub); err != nil {
		return fmt.Errorf("pin host key: %w", err)
	}
	if isTap(*vm) {
		// The guest has its own address: no forwards.
		return d.netEngine().leaseNet(ctx, vm, undo)
	}
	for _, gp := range []int{guestSSHPort, guestOpencodePort} {
		hp, err := d.store.AllocatePort(ctx, vmID, gp, freeLocalPort)
		if err != nil {
			return fmt.Errorf("allocate host port for guest port %d: %w", gp, err)
		}
		if gp == guestSSHPort {
			vm.SSHPort = hp
		}
	}
	return nil
}

// createDisks makes the root and work disks, and picks the accelerator
// (the KVM probe, once per host boot, boots the image's kernel).
func (d *Daemon) createDisks(ctx context.Context, r *vmRun) error {
	vm := r.vm
	if err := d.makeRootDisk(ctx, *vm, r.img); err != nil {
		return err
	}
	fp, err := d.makeWorkDisk(ctx, r.img, vm.Dir, vm.WorkDiskBytes)
	vm.WorkSeedFingerprint = fp
	if err != nil {
		return err
	}
	vm.Accel = d.accelFor(ctx, r.img).Accel
	if !d.driverFor(*vm).Info().Emulates {
		// A VMM without emulation (Firecracker) is KVM or nothing.
		vm.Accel = "kvm"
	}
	return nil
}

// createNetwork attaches a tap VM to banger's bridge.
func (d *Daemon) createNetwork(ctx context.Context, r *vmRun) error {
	return d.netEngine().attachNet(ctx, *r.vm, r.undo)
}

// noServiceWait skips the services step: the image has no opencode, or
// the create asked not to wait for it.
func noServiceWait(r *vmRun) bool {
	return !image.HasService(r.img.Manifest, image.ServiceOpencode) || r.req.NoWaitServices
}

// createServices waits for the image's services (opencode).
func (d *Daemon) createServices(ctx context.Context, r *vmRun) error {
	return d.waitOpencode(ctx, *r.vm)
}

// waitOpencode waits until opencode answers HTTP on guest port 4096,
// through the VM's 127.0.0.1 forward (any HTTP answer counts: QEMU
// accepts on the host side before the guest listens, so a TCP connect
// alone proves nothing).
func (d *Daemon) waitOpencode(ctx context.Context, vm store.VM) error {
	addr, err := d.netEngine().guestEndpoint(ctx, vm, guestOpencodePort)
	if err != nil {
		return err
	}
	timeout := d.cfg.VM.BootTimeout.Duration
	if timeout <= 0 {
		timeout = 3 * time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + addr + "/global/health"
	hc := &http.Client{Timeout: 3 * time.Second}
	pw, _ := readOpencodePassword(vm.Dir)
	for {
		req, err := http.NewRequestWithContext(wctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.SetBasicAuth(api.OpencodeUsername, pw)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			d.checkOpencodeAuth(wctx, hc, url, vm)
			return nil
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return api.Errorf(api.CodeUnavailable, fmt.Sprintf("check `banger vm exec %s -- systemctl status opencode`; `--no-wait-services` skips this wait", vm.Name),
				"opencode did not answer on guest port %d within %s", guestOpencodePort, timeout)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// boot boots a VM whose disks exist (bootSteps), retried once when it
// hangs early (runSteps). What it starts is pushed on undo.
func (d *Daemon) boot(ctx context.Context, vm *store.VM, img store.Image, stage stageFunc, undo *cleanup, persist, jailer bool) (vmm.Process, error) {
	r := &vmRun{vm: vm, img: img, undo: undo, persist: persist, jailer: jailer}
	err := d.runSteps(ctx, stage, r, d.bootSteps())
	return r.proc, err
}

// bootSeed writes a fresh seed disk. Only real VMs get the user's
// credentials; a verify boot does not.
func (d *Daemon) bootSeed(ctx context.Context, r *vmRun) error {
	return d.makeSeedDisk(ctx, r.vm, r.persist)
}

// bootVMM builds the VMM's spec, picks its user and starts it. A
// failure to start carries the console's tail.
func (d *Daemon) bootVMM(ctx context.Context, r *vmRun) error {
	vm := r.vm
	spec, err := d.vmSpec(ctx, vm, r.img)
	if err != nil {
		return err
	}
	spec.Jailer = d.jailed(*vm, r.jailer)
	spec.Restore = r.restore
	if err := d.runAs(ctx, vm, &spec, r.persist, r.undo); err != nil {
		return err
	}
	r.spec = spec
	if err := d.startVMM(ctx, r); err != nil {
		return d.withConsole(vm.Dir, err)
	}
	return nil
}

func (d *Daemon) startVMM(ctx context.Context, r *vmRun) error {
	vm, drv := r.vm, d.driverFor(*r.vm)
	resetConsole(vm.Dir)
	if err := drv.Validate(r.spec); err != nil {
		return err
	}
	// The VMM is recorded before it exists: its command line carries
	// the instance prefix and the VM id (spec.ProcessName), and a real
	// VM's row (state creating) is written before this. A daemon killed
	// before the PID below is stored leaves a VMM the next one finds by
	// that name and stops (reconcile's sweepVMMs); provisioning and
	// verify VMs have no row and are found the same way.
	p, err := drv.Start(ctx, r.spec)
	if err != nil {
		return err
	}
	r.proc = p
	// Undone in reverse: stop the VMM, then remove what its driver keeps
	// outside the VM directory (a Firecracker jail holds hard links to
	// the VM's disks: without this their space outlived a failed create).
	r.undo.push(func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if err := drv.Remove(rctx, vm.Dir, p); err != nil {
			d.log.Warn("remove VMM leftovers of a failed boot", "vm", vm.Name, "err", err)
		}
	})
	r.undo.push(func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		_ = drv.Stop(sctx, vm.Dir, p, true, 0)
	})
	// Record the PID (and the driver's sockets) at once: a daemon that
	// dies now still finds them.
	vm.PID, vm.PIDStartTime, vm.VMMStateJSON = p.PID, p.StartTime, p.State
	d.keepConsole(d.baseCtx(), *vm)
	if !r.persist {
		return nil
	}
	return d.store.UpdateVM(ctx, vm)
}

// bootAgent waits until the guest agent answers; a real VM is then
// recorded running.
func (d *Daemon) bootAgent(ctx context.Context, r *vmRun) error {
	if err := d.connectAgent(ctx, r); err != nil {
		return err
	}
	if !r.persist {
		return nil
	}
	return d.markRunning(ctx, r)
}

// connectAgent waits until the guest agent answers and caches its
// session.
func (d *Daemon) connectAgent(ctx context.Context, r *vmRun) error {
	vm := r.vm
	c, err := d.waitAgent(ctx, vm, r.proc)
	if err != nil {
		return err
	}
	d.setAgent(vm.ID, c)
	// A later step failing stops this VMM; its session must not stay in
	// the cache for a VM that no longer exists.
	r.undo.push(func() { d.dropAgent(vm.ID) })
	return nil
}

// markRunning records a real VM running, its guest's network now
// through the gateway.
func (d *Daemon) markRunning(ctx context.Context, r *vmRun) error {
	vm := r.vm
	// From here the guest's connections go through the gateway: later
	// steps (services) may already need the network.
	d.egress.supervise(*vm)
	r.undo.push(func() { d.egress.unsupervise(vm.ID) })
	vm.State, vm.LastError = api.VMRunning, ""
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return fmt.Errorf("record running vm: %w", err)
	}
	// A start (boot, restore, wake) is a use: idle park counts from
	// here, not from before the VM stopped.
	d.act.touch(vm.ID)
	return nil
}

// withConsole attaches the tail of the VM's console log to a boot error:
// it is the first thing anyone debugging a boot wants to see.
func (d *Daemon) withConsole(dir string, err error) error {
	d.consoleSettled(dir, 500*time.Millisecond)
	tail := system.TailFile(filepath.Join(dir, paths.FileConsoleLog), 3000)
	return &opError{err: err, consoleTail: tail, hint: "see the console tail below; `banger doctor` checks the host"}
}

func (d *Daemon) waitAgent(ctx context.Context, vm *store.VM, proc vmm.Process) (*agentclient.Client, error) {
	timeout := d.cfg.VM.BootTimeout.Duration
	if timeout <= 0 {
		timeout = 3 * time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Give up early when the VMM dies instead of waiting out the deadline.
	go func() {
		for wctx.Err() == nil {
			if !d.driverFor(*vm).Alive(proc) {
				cancel()
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	c, err := agentclient.WaitReady(wctx, func(ctx context.Context) (net.Conn, error) {
		return d.driverFor(*vm).DialAgent(ctx, vm.Dir)
	}, 3*time.Second)
	if err != nil {
		if !d.driverFor(*vm).Alive(proc) {
			return nil, fmt.Errorf("the VM exited during boot")
		}
		if ctx.Err() == nil && wctx.Err() != nil {
			// Judge the console only once its pump has written what
			// the VMM already sent.
			d.consoleSettled(vm.Dir, 500*time.Millisecond)
			return nil, earlyHang(vm.Dir, fmt.Errorf("guest agent did not answer within %s", timeout))
		}
		return nil, fmt.Errorf("wait for guest agent: %w", err)
	}
	h, err := c.Health(ctx)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("agent health: %w", err)
	}
	if h.Version != buildinfo.Version {
		d.log.Warn("agent version differs from daemon", "vm", vm.Name, "agent", h.Version, "daemon", buildinfo.Version)
	}
	return c, nil
}

func (d *Daemon) vmSpec(ctx context.Context, vm *store.VM, img store.Image) (vmm.Spec, error) {
	ports, err := d.store.PortsForVM(ctx, vm.ID)
	if err != nil {
		return vmm.Spec{}, err
	}
	args := []string{"banger.ip=10.0.2.15/24", "banger.gw=10.0.2.2", "banger.dns=10.0.2.3"}
	var nic vmm.Net
	if isTap(*vm) {
		l, err := d.store.LeaseForVM(ctx, vm.ID)
		if err != nil {
			return vmm.Spec{}, fmt.Errorf("lease of %s: %w", vm.Name, err)
		}
		args = d.netEngine().tapKernelArgs(l)
		nic = vmm.Net{Mode: vmm.NetTap, TapDevice: l.Tap, MAC: l.MAC}
		// Forwards belong to user networking.
		ports = nil
	}
	drv := d.driverFor(*vm)
	bi := bootImage(img)
	root, work, err := d.vmDisks(ctx, *vm, img)
	if err != nil {
		return vmm.Spec{}, err
	}
	kernel, err := drv.Kernel(bi)
	if err != nil {
		return vmm.Spec{}, err
	}
	args = append(args, drv.KernelArgs(vm.Accel)...)
	var extraPorts []string
	if drv.Info().ExtraSerialPorts {
		extraPorts = d.cfg.VM.ExtraSerialPorts
	}
	var fwd []vmm.Forward
	for _, p := range ports {
		fwd = append(fwd, vmm.Forward{HostPort: p.Port, GuestPort: p.GuestPort})
	}
	// Throwaway VMs (image provisioning) have no port rows, only an SSH port.
	if len(ports) == 0 && vm.SSHPort != 0 && !isTap(*vm) {
		fwd = append(fwd, vmm.Forward{HostPort: vm.SSHPort, GuestPort: guestSSHPort})
	}
	return vmm.Spec{
		ID:          vm.ID,
		ProcessName: d.layout.InstancePrefix() + "-" + vm.ID,
		Dir:         vm.Dir,
		Kernel:      kernel,
		Initrd:      bi.Initrd,
		Cmdline:     image.KernelCmdline(args...),
		Disks: []vmm.Disk{
			root,
			{Path: filepath.Join(vm.Dir, paths.FileSeedDisk), Format: "raw", ReadOnly: true},
			work,
		},
		CPUs:      vm.CPUs,
		MemoryMiB: vm.MemoryMiB,
		Accel:     vm.Accel,
		Egress:    netEgress(*vm),
		Forwards:  fwd,
		Net:       nic,
		// Benchmark-only raw ports ([vm] extra_serial_ports).
		ExtraSerialPorts: extraPorts,
	}, nil
}

// makeRootDisk gives a VM its copy-on-write root disk, as its driver
// wants it: a qcow2 overlay on the image (QEMU), a reflinked (or sparse)
// raw copy (Firecracker, which reads raw images only).
func (d *Daemon) makeRootDisk(ctx context.Context, vm store.VM, img store.Image) error {
	drv := d.driverFor(vm)
	bi := bootImage(img)
	return drv.MakeRootDisk(ctx, d.runner, bi, drv.RootDisk(bi, vm.Dir))
}

// makeSeedDisk writes the small read-only disk that delivers banger-agent
// and this VM's identity. It is rebuilt at every boot, so a new banger
// build reaches old VMs and old images. withAuth adds the host user's
// agent auth files, so a token refreshed on the host reaches the VM at its
// next boot; vm.AuthSyncedJSON records which were sent (names only).
func (d *Daemon) makeSeedDisk(ctx context.Context, vm *store.VM, withAuth bool) error {
	seedDir := filepath.Join(vm.Dir, dirSeed)
	defer os.RemoveAll(seedDir)
	if err := os.MkdirAll(seedDir, 0o700); err != nil {
		return err
	}
	agent, err := d.agentBinary()
	if err != nil {
		return err
	}
	if err := system.CloneFile(ctx, agent, filepath.Join(seedDir, "banger-agent")); err != nil {
		return fmt.Errorf("copy banger-agent: %w", err)
	}
	if err := os.Chmod(filepath.Join(seedDir, "banger-agent"), 0o755); err != nil {
		return err
	}
	hostKey, err := os.ReadFile(filepath.Join(vm.Dir, fileHostKey))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	_, clientPub, err := sshkeys.EnsureClientKey(d.layout.SSHDir)
	if err != nil {
		return fmt.Errorf("client key: %w", err)
	}
	seed := agentapi.SeedConfig{
		Hostname:       vm.Name,
		SSHHostKeys:    map[string]string{"ed25519": string(hostKey)},
		AuthorizedKeys: string(clientPub),
	}
	var authSize int64
	if withAuth {
		creds, err := d.authSeed(d.broker, vm, vm.Credentials, d.cfg.Credentials.Env)
		if err != nil {
			return err
		}
		seed.AuthFiles = creds.Files
		vm.AuthSyncedJSON = encodeNames(creds.Synced)
		for _, f := range seed.AuthFiles {
			authSize += int64(len(f.Data))
		}
		if usesGateway(*vm) || len(creds.Env) > 0 {
			seed.Egress = &agentapi.SeedEgress{Gateway: usesGateway(*vm), CACert: creds.CACert, Env: creds.Env}
		}
	}
	cfg, err := json.Marshal(seed)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(seedDir, "config.json"), cfg, 0o600); err != nil {
		return err
	}
	// opencode.service reads its password from the seed disk: never a
	// command line (ps shows it to everyone), never a log.
	pw, err := ensureOpencodePassword(vm.Dir)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(seedDir, seedOpencodeEnv), opencodeEnv(pw), 0o600); err != nil {
		return err
	}
	p := filepath.Join(vm.Dir, paths.FileSeedDisk)
	st, err := os.Stat(agent)
	if err != nil {
		return err
	}
	// Room for the agent, the config (auth files grow by a third as
	// base64) and the filesystem's own metadata.
	if err := system.CreateSparse(p, st.Size()+2*authSize+8<<20); err != nil {
		return fmt.Errorf("create seed disk: %w", err)
	}
	if _, err := d.runner.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", image.LabelSeed, "-d", seedDir, p); err != nil {
		return fmt.Errorf("format seed disk: %w", err)
	}
	return os.Chmod(p, 0o600)
}

// agentBinary finds the banger-agent delivered to guests: the configured
// path, then next to the banger binary, then the system location.
func (d *Daemon) agentBinary() (string, error) {
	var candidates []string
	if d.agentPath != "" {
		candidates = append(candidates, d.agentPath)
	}
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), "banger-agent"))
	}
	candidates = append(candidates, "/usr/local/lib/banger/banger-agent", "/usr/lib/banger/banger-agent")
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", api.Errorf(api.CodeUnavailable, "run `make build` (it puts bin/banger-agent next to bin/banger) or set agent_path in the config", "banger-agent binary not found (looked in %v)", candidates)
}

func hostKeyAlias(name string) string { return "banger-" + name }

func freeLocalPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func hostMemoryMiB() int {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb int
	if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err != nil {
		return 0
	}
	return kb / 1024
}

func (d *Daemon) cachedAgent(vmID string) *agentclient.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.agents[vmID]; c != nil && !c.IsClosed() {
		return c
	}
	return nil
}

// guestExec runs req through agent c without stdin, its output to stdout
// and stderr (nil discards), and returns how it exited.
func guestExec(ctx context.Context, c *agentclient.Client, req api.ExecRequest, stdout, stderr io.Writer) (api.ExitStatus, error) {
	conn, err := c.Exec(ctx, req)
	if err != nil {
		return api.ExitStatus{}, err
	}
	defer conn.Close()
	return mux.RunExec(ctx, conn, nil, stdout, stderr, nil, nil)
}

func (d *Daemon) lockAgentDial(vmID string) func() {
	return d.lockVM("agent-dial/" + vmID)
}

// setAgent caches the agent session of a VM.
func (d *Daemon) setAgent(vmID string, c *agentclient.Client) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.agents[vmID]; old != nil && old != c {
		old.Close()
	}
	d.agents[vmID] = c
}

func (d *Daemon) dropAgent(vmID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.agents[vmID]; c != nil {
		c.Close()
		delete(d.agents, vmID)
	}
}

// agent returns a live agent session for a running VM, redialing when the
// previous one died (daemon restart, agent restart).
func (d *Daemon) agent(ctx context.Context, vm store.VM) (*agentclient.Client, error) {
	if vm.State != api.VMRunning {
		return nil, api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name), "VM %q is %s", vm.Name, vm.State)
	}
	if c := d.cachedAgent(vm.ID); c != nil {
		return c, nil
	}
	// The VMM's agent socket takes one client at a time: dial under a
	// per-VM lock, and look again once it is ours, since whoever held it
	// may have connected already (reconcile and a request racing).
	unlock := d.lockAgentDial(vm.ID)
	defer unlock()
	if c := d.cachedAgent(vm.ID); c != nil {
		return c, nil
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := agentclient.WaitReady(dctx, func(ctx context.Context) (net.Conn, error) {
		return d.driverFor(vm).DialAgent(ctx, vm.Dir)
	}, 3*time.Second)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, fmt.Sprintf("check `banger vm health %s` and `banger vm logs %s`", vm.Name, vm.Name), "guest agent of %q is not answering: %v", vm.Name, err)
	}
	d.setAgent(vm.ID, c)
	return c, nil
}
