// Package firecracker drives Firecracker microVMs: a typed client of its
// HTTP API on a Unix socket (src/firecracker/swagger/firecracker.yaml),
// the hybrid-vsock handshake to reach the guest agent, and the optional
// jailer. Firecracker runs detached from the daemon so VMs outlive it.
package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Binary is the Firecracker executable banger runs.
const Binary = "firecracker"

// GuestCID is the guest's vsock context id. With hybrid vsock the CID
// only has meaning inside the VM (there is no host vhost device and no
// global CID space), so every VM can use the first valid one.
const GuestCID = 3

// MaxVCPUs is the swagger's maximum vcpu_count.
const MaxVCPUs = 32

// ErrNeedsTap is returned for a VM that is not on a TAP device:
// Firecracker has no user-mode network stack.
var ErrNeedsTap = errors.New("firecracker needs --net tap (it has no user-mode networking)")

// Timeouts of the start sequence.
const (
	socketWait  = 5 * time.Second
	configWait  = 30 * time.Second
	killTimeout = 5 * time.Second
)

// Driver is the Firecracker driver.
type Driver struct {
	vmm.Base
	// Binary overrides the firecracker path.
	Binary string
	// Jailer is used for VMs whose spec asks for it.
	Jailer JailerConfig
	// JailAll runs every VM under the jailer ([firecracker] jailer).
	JailAll bool
	// setTapOwner is vmm.SetTapOwner; tests that run a fake jailer
	// replace it so no TAP is touched on the host.
	setTapOwner func(name string, uid, gid int) error
}

var _ vmm.Driver = (*Driver)(nil)

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// Info implements vmm.Driver: KVM only, TAP only, a jailer, a console
// it appends to console.log itself; a VM's own user only in a jail (an
// unjailed Firecracker opens /dev/kvm and its TAP by name and stays the
// daemon's user). Auto prefers it where it can run.
func (d *Driver) Info() vmm.Info {
	return vmm.Info{
		Title:     "Firecracker",
		Jailer:    true,
		Console:   vmm.ConsoleFile,
		OwnUser:   vmm.OwnUserJailed,
		Preferred: true,
	}
}

// Kernel implements vmm.Booter: Firecracker boots the ELF vmlinux (and
// takes raw disks only, Base's root disk).
func (d *Driver) Kernel(img vmm.Image) (string, error) {
	if img.Vmlinux == "" {
		return "", api.Errorf(api.CodeUnavailable, "rebuild it with `banger image build` (new images carry a vmlinux), or use --vmm qemu",
			"image %q has no ELF vmlinux for Firecracker", img.Name)
	}
	return img.Vmlinux, nil
}

// Validate implements vmm.Booter: what planStart refuses before any
// process exists.
func (d *Driver) Validate(spec vmm.Spec) error { return validate(spec) }

// HostChecks implements vmm.Host: the firecracker binary and its
// version, and the jailer when VMs use it.
func (d *Driver) HostChecks(ctx context.Context, r system.Runner, need vmm.Need) []doctor.Check {
	checks := []doctor.Check{doctor.Firecracker(ctx, r, need.Required)}
	if need.Jailer {
		checks = append(checks, doctor.Jailer(ctx, r))
	}
	return checks
}

// UsesJailer implements vmm.Host: asked for, configured for all, or
// recorded by the VM's first boot.
func (d *Driver) UsesJailer(requested bool, p vmm.Process) bool {
	return requested || d.JailAll || Jailed(p.State)
}

// Status implements vmm.Adopter: the instance state ("Running",
// "Paused", "Not started") from Firecracker's API.
func (d *Driver) Status(ctx context.Context, dir string, p vmm.Process) (string, error) {
	return Status(ctx, dir, p)
}

func (d *Driver) binary() string {
	if d.Binary != "" {
		return d.Binary
	}
	return Binary
}

// State is what the driver records per VM (store.VM.VMMStateJSON). Paths
// are as the host sees them.
type State struct {
	APISocket string `json:"api_socket"`
	VsockUDS  string `json:"vsock_uds"`
	GuestCID  uint32 `json:"guest_cid"`
	AgentPort uint32 `json:"agent_vsock_port"`
	// Jail is set for a VM started under the jailer.
	Jail *JailPlan `json:"jail,omitempty"`
}

// DecodeState reads a Process's State; an empty one means the defaults
// in dir (a VM recorded before its state was).
func DecodeState(dir, s string) (State, error) {
	st := State{
		APISocket: filepath.Join(dir, paths.FileFCSocket),
		VsockUDS:  filepath.Join(dir, paths.FileVsockSocket),
		GuestCID:  GuestCID,
		AgentPort: agentapi.AgentVsockPort,
	}
	if s == "" {
		return st, nil
	}
	if err := json.Unmarshal([]byte(s), &st); err != nil {
		return st, fmt.Errorf("decode firecracker state: %w", err)
	}
	return st, nil
}

// BootArgs is the guest command line for Firecracker. reboot=k makes a
// guest reboot (which SendCtrlAltDel triggers) end Firecracker, as its
// docs prescribe; pci=off skips probing a bus Firecracker does not offer
// by default. nomodule is dropped: the Debian kernel finds its virtio
// drivers as modules.
func BootArgs(cmdline string) string {
	var out []string
	for _, a := range strings.Fields(cmdline) {
		if a == "nomodule" {
			continue
		}
		out = append(out, a)
	}
	for _, a := range []string{"reboot=k", "pci=off"} {
		if !containsArg(out, a) {
			out = append(out, a)
		}
	}
	return strings.Join(out, " ")
}

func containsArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

// checkELF refuses a kernel Firecracker cannot load: on x86_64 it takes
// an uncompressed ELF vmlinux, not a bzImage.
func checkELF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open kernel: %w", err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte("\x7fELF")) {
		return fmt.Errorf("kernel %s is not an ELF vmlinux (Firecracker cannot boot a bzImage); rebuild the image with `banger image build`", path)
	}
	return nil
}

// plan is one start: the API calls' bodies, with paths as Firecracker
// sees them (in-jail paths under the jailer), and the host-side state.
type plan struct {
	machine MachineConfig
	boot    BootSource
	drives  []Drive
	nic     NetworkInterface
	vsock   Vsock
	logger  Logger
	metrics Metrics
	state   State
	// fcArgs start Firecracker (after the jailer's own, when jailed).
	fcArgs []string
	// driveLinks (unjailed) are the symlinks in the VM directory that
	// the drives' relative paths name: link name -> the VM's disk.
	driveLinks map[string]string
	// load is the snapshot load of a restore (nil for a boot).
	load *SnapshotLoad
}

// Unjailed, Firecracker runs in the VM directory and is given the
// drives and the vsock socket by relative names. A snapshot records the
// paths the devices were opened at and Firecracker reopens exactly those
// on load (docs/snapshotting/snapshot-support.md: "at the same relative
// paths"), so fixed relative names make a snapshot restorable into any
// other VM directory; jailed, the in-jail names do the same.
const unjailedDrivePrefix = "fc-"

// drivePath is the path Firecracker is given for drive i.
func drivePath(i int, jailed bool) string {
	name := driveID(i) + ".img"
	if jailed {
		return "/" + name
	}
	return unjailedDrivePrefix + name
}

// planStart turns a spec into the API calls. It is pure, and every check
// that can fail before a process exists happens here.
func planStart(spec vmm.Spec, jail *JailPlan) (plan, error) {
	if err := validate(spec); err != nil {
		return plan{}, err
	}
	smt := false
	p := plan{
		machine: MachineConfig{VCPUCount: spec.CPUs, MemSizeMiB: spec.MemoryMiB, SMT: &smt},
		boot:    BootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: BootArgs(spec.Cmdline)},
		nic:     NetworkInterface{IfaceID: "eth0", HostDevName: spec.Net.TapDevice, GuestMAC: spec.Net.MAC},
		state: State{
			APISocket: filepath.Join(spec.Dir, paths.FileFCSocket),
			VsockUDS:  filepath.Join(spec.Dir, paths.FileVsockSocket),
			GuestCID:  GuestCID,
			AgentPort: agentapi.AgentVsockPort,
		},
	}
	apiSock := p.state.APISocket
	// Relative to the VM directory, Firecracker's working directory.
	p.vsock = Vsock{GuestCID: GuestCID, UDSPath: paths.FileVsockSocket}
	p.logger = Logger{LogPath: filepath.Join(spec.Dir, paths.FileFCLog), Level: "Info", ShowLevel: true}
	p.metrics = Metrics{MetricsPath: filepath.Join(spec.Dir, paths.FileFCMetrics)}
	p.driveLinks = map[string]string{}
	for i, dk := range spec.Disks {
		p.drives = append(p.drives, Drive{DriveID: driveID(i), PathOnHost: drivePath(i, jail != nil), IsRootDevice: i == 0, IsReadOnly: dk.ReadOnly})
		if jail == nil {
			p.driveLinks[drivePath(i, false)] = dk.Path
		}
	}
	if jail != nil {
		// Firecracker sees only the jail: every path it is given is an
		// in-jail one; the host reaches the sockets under the jail root.
		p.boot.KernelImagePath = jailKernel
		if spec.Initrd != "" {
			p.boot.InitrdPath = jailInitrd
		}
		apiSock = jailAPISocket
		p.vsock.UDSPath = jailVsock
		p.logger.LogPath = jailLog
		p.metrics.MetricsPath = jailMetrics
		p.state.APISocket = jail.HostPath(jailAPISocket)
		p.state.VsockUDS = jail.HostPath(jailVsock)
		p.state.Jail = jail
	}
	for _, s := range []string{p.state.APISocket, p.state.VsockUDS} {
		if err := paths.CheckSocketPath(s); err != nil {
			return plan{}, err
		}
	}
	p.fcArgs = []string{"--api-sock", apiSock}
	if jail == nil {
		// The jailer passes --id itself.
		p.fcArgs = append(p.fcArgs, "--id", spec.ID)
	}
	return p, nil
}

// validate refuses a spec Firecracker cannot boot.
func validate(spec vmm.Spec) error {
	if spec.Net.Mode != vmm.NetTap {
		return ErrNeedsTap
	}
	if spec.Net.TapDevice == "" {
		return errors.New("firecracker: tap mode without a TAP device")
	}
	if spec.CPUs < 1 || spec.CPUs > MaxVCPUs {
		return fmt.Errorf("firecracker takes 1 to %d vCPUs, not %d", MaxVCPUs, spec.CPUs)
	}
	if spec.MemoryMiB < 1 {
		return fmt.Errorf("firecracker: impossible memory size %d MiB", spec.MemoryMiB)
	}
	if len(spec.Disks) == 0 {
		return errors.New("firecracker: no root disk")
	}
	for _, dk := range spec.Disks {
		if !filepath.IsAbs(dk.Path) {
			return fmt.Errorf("firecracker: disk path %q is not absolute", dk.Path)
		}
		if dk.Format != "raw" {
			return fmt.Errorf("firecracker takes raw disks only, not %s (%s)", dk.Format, dk.Path)
		}
	}
	return nil
}

// configure runs the documented pre-boot sequence and starts the guest.
func (p plan) configure(ctx context.Context, c *Client) error {
	steps := []struct {
		name string
		run  func() error
	}{
		{"machine config", func() error { return c.PutMachineConfig(ctx, p.machine) }},
		{"boot source", func() error { return c.PutBootSource(ctx, p.boot) }},
		{"drives", func() error {
			for _, dr := range p.drives {
				if err := c.PutDrive(ctx, dr); err != nil {
					return err
				}
			}
			return nil
		}},
		{"network interface", func() error { return c.PutNetworkInterface(ctx, p.nic) }},
		{"vsock", func() error { return c.PutVsock(ctx, p.vsock) }},
		{"logger", func() error { return c.PutLogger(ctx, p.logger) }},
		{"metrics", func() error { return c.PutMetrics(ctx, p.metrics) }},
		{"instance start", func() error { return c.Action(ctx, ActionInstanceStart) }},
	}
	for _, s := range steps {
		if err := s.run(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// Start implements vmm.Driver: startSteps, in order. A failing step
// undoes what the steps before it made (the jail, the process) and, once
// Firecracker ran, carries the tail of its stderr.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	s := &starting{spec: spec}
	for _, st := range d.startSteps(spec.Restore != nil) {
		if err := st.fn(ctx, s); err != nil {
			return vmm.Process{}, s.fail(err)
		}
	}
	return s.proc, nil
}

// startStep is one named step of Start, in the way of firecracker-go-sdk's
// handler lists.
type startStep struct {
	name string
	fn   func(ctx context.Context, s *starting) error
}

// startSteps are Start's steps in order.
func (d *Driver) startSteps(restore bool) []startStep {
	if restore {
		return []startStep{
			{"check snapshot", d.checkRestore},
			{"plan", d.makePlan},
			{"prepare files", d.prepareFiles},
			{"launch", d.launch},
			{"wait for API", d.waitForAPI},
			{"load snapshot", d.loadSnapshot},
		}
	}
	return []startStep{
		{"check kernel", d.checkKernel},
		{"plan", d.makePlan},
		{"prepare files", d.prepareFiles},
		{"launch", d.launch},
		{"wait for API", d.waitForAPI},
		{"configure", d.configureVM},
	}
}

// starting is one Start in progress: what its steps share.
type starting struct {
	spec   vmm.Spec
	fcPath string
	jcfg   JailerConfig
	jail   *JailPlan
	plan   plan
	state  string
	// undo is run in reverse when a step fails.
	undo []func()
	// cmd runs once launched; exited closes when it ends.
	cmd        *exec.Cmd
	exited     chan struct{}
	stderrPath string
	proc       vmm.Process
	// Restores only: the snapshot's metadata and the version of the
	// Firecracker that loads it.
	meta    *snapshotMeta
	version [3]int
}

func (s *starting) fail(err error) error {
	for i := len(s.undo) - 1; i >= 0; i-- {
		s.undo[i]()
	}
	if s.cmd != nil {
		if t := strings.TrimSpace(system.TailFile(s.stderrPath, 1024)); t != "" {
			err = fmt.Errorf("%w: %s", err, t)
		}
	}
	return err
}

// checkKernel refuses a kernel Firecracker cannot load.
func (d *Driver) checkKernel(ctx context.Context, s *starting) error {
	return checkELF(s.spec.Kernel)
}

// makePlan finds firecracker and turns the spec into the jail (if any) and
// the API calls.
func (d *Driver) makePlan(ctx context.Context, s *starting) error {
	fcPath, err := exec.LookPath(d.binary())
	if err != nil {
		return fmt.Errorf("find firecracker: %w", err)
	}
	s.fcPath = fcPath
	s.jcfg = d.Jailer
	if s.spec.UID != 0 {
		// The VM's own user: jailed VMs never share a uid.
		s.jcfg.UID, s.jcfg.GID = s.spec.UID, s.spec.GID
	}
	if s.spec.Jailer {
		var disks []string
		for _, dk := range s.spec.Disks {
			disks = append(disks, dk.Path)
		}
		kernel, initrd := s.spec.Kernel, s.spec.Initrd
		if s.meta != nil {
			kernel, initrd = "", ""
		}
		jp, err := PlanJail(s.jcfg, fcPath, s.spec.ID, kernel, initrd, disks)
		if err != nil {
			return err
		}
		if s.meta != nil {
			jp.addSnapshot(s.spec.Restore.Dir, s.spec.Restore.Share)
		}
		s.jail = &jp
	}
	p, err := planStart(s.spec, s.jail)
	if err != nil {
		return err
	}
	if s.meta != nil {
		load, err := planLoad(p, s.spec, *s.meta, s.jail, s.version)
		if err != nil {
			return fmt.Errorf("restore from %s: %w", s.spec.Restore.Dir, err)
		}
		p.load = &load
	}
	stateJSON, err := json.Marshal(p.state)
	if err != nil {
		return err
	}
	s.plan, s.state = p, string(stateJSON)
	return nil
}

// prepareFiles builds the jail (or the log files an unjailed Firecracker
// opens) and clears the sockets of a previous boot.
func (d *Driver) prepareFiles(ctx context.Context, s *starting) error {
	p, jail := s.plan, s.jail
	if jail != nil {
		// A jail left by the previous boot of this VM (same id) would
		// keep stale sockets and a cgroup the jailer refuses to reuse.
		if err := jail.Remove(); err != nil {
			return err
		}
		s.undo = append(s.undo, func() { jail.Remove() })
		if err := jail.Prepare(ctx); err != nil {
			return err
		}
		// Firecracker opens its TAP by name inside the jail, as the
		// jail's user: make that user the TAP's owner.
		if s.spec.Net.TapDevice != "" {
			setOwner := d.setTapOwner
			if setOwner == nil {
				setOwner = vmm.SetTapOwner
			}
			if err := setOwner(s.spec.Net.TapDevice, jail.UID, jail.GID); err != nil {
				return err
			}
		}
	} else {
		for _, f := range []string{p.logger.LogPath, p.metrics.MetricsPath} {
			// Firecracker opens these, it does not create them.
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				return fmt.Errorf("create %s: %w", filepath.Base(f), err)
			}
		}
		for name, target := range p.driveLinks {
			link := filepath.Join(s.spec.Dir, name)
			_ = os.Remove(link)
			if err := os.Symlink(target, link); err != nil {
				return fmt.Errorf("link drive: %w", err)
			}
		}
		if err := d.prepareMemory(ctx, s); err != nil {
			return err
		}
	}
	for _, sock := range []string{p.state.APISocket, p.state.VsockUDS} {
		_ = os.Remove(sock)
	}
	if jail != nil {
		// The daemon reaches sockets through the VM directory, whatever
		// the mode, so DialAgent needs no state.
		for host, name := range map[string]string{jail.HostPath(jailAPISocket): paths.FileFCSocket, jail.HostPath(jailVsock): paths.FileVsockSocket} {
			link := filepath.Join(s.spec.Dir, name)
			_ = os.Remove(link)
			if err := os.Symlink(host, link); err != nil {
				return fmt.Errorf("link jail socket: %w", err)
			}
		}
	}
	return nil
}

// launch starts Firecracker (under the jailer when jailed), detached:
// the VMM must outlive the boot's context and the daemon.
func (d *Driver) launch(ctx context.Context, s *starting) error {
	var cmd *exec.Cmd
	if s.jail != nil {
		jb := d.Jailer.Binary
		if jb == "" {
			jb = "jailer"
		}
		// Not CommandContext: the VMM must outlive the boot's context.
		cmd = exec.Command(jb, JailerArgs(s.jcfg, s.fcPath, s.spec.ID, s.plan.fcArgs)...)
	} else {
		cmd = exec.Command(s.fcPath, s.plan.fcArgs...)
		// The relative drive and vsock paths are the VM directory's.
		cmd.Dir = s.spec.Dir
	}
	console, err := os.OpenFile(filepath.Join(s.spec.Dir, paths.FileConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open console log: %w", err)
	}
	defer console.Close()
	stderrPath := filepath.Join(s.spec.Dir, paths.FileFCStderr)
	stderr, err := os.OpenFile(stderrPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("open firecracker stderr log: %w", err)
	}
	defer stderr.Close()
	// The guest's serial console is Firecracker's stdout; it goes to a
	// file, never to a pipe the daemon holds.
	cmd.Stdout, cmd.Stderr = console, stderr
	cmd.Env = []string{"LC_ALL=C", "PATH=" + os.Getenv("PATH")}
	// Its own session: signals to the daemon's group never reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start firecracker: %w", err)
	}
	// Reap it when it exits while this daemon lives; after a daemon
	// restart init does.
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited, s.stderrPath = cmd, exited, stderrPath
	s.undo = append(s.undo, func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	s.proc = vmm.Process{PID: cmd.Process.Pid, State: s.state}
	st, err := system.ProcStartTime(s.proc.PID)
	if err != nil {
		return fmt.Errorf("firecracker exited right after start")
	}
	s.proc.StartTime = st
	return nil
}

// waitForAPI waits until Firecracker answers on its socket.
func (d *Driver) waitForAPI(ctx context.Context, s *starting) error {
	return waitAPI(ctx, NewClient(s.plan.state.APISocket), s.exited)
}

// configureVM runs the pre-boot API calls and starts the guest.
func (d *Driver) configureVM(ctx context.Context, s *starting) error {
	cctx, cancel := context.WithTimeout(ctx, configWait)
	defer cancel()
	if err := s.plan.configure(cctx, NewClient(s.plan.state.APISocket)); err != nil {
		return fmt.Errorf("configure firecracker: %w", err)
	}
	return nil
}

// waitAPI waits until Firecracker answers on its socket.
func waitAPI(ctx context.Context, c *Client, exited <-chan struct{}) error {
	deadline := time.Now().Add(socketWait)
	var last error
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Describe(rctx)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-exited:
			return errors.New("firecracker exited before its API answered")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("firecracker API did not answer within %s: %w", socketWait, last)
}

// Alive implements vmm.Driver.
func (d *Driver) Alive(p vmm.Process) bool {
	return p.PID > 0 && system.ProcAlive(p.PID, p.StartTime)
}

// Stop implements vmm.Driver: Ctrl+Alt+Del (the guest reboots, and with
// reboot=k Firecracker exits), then SIGKILL after timeout.
func (d *Driver) Stop(ctx context.Context, dir string, p vmm.Process, force bool, timeout time.Duration) error {
	if !d.Alive(p) {
		return nil
	}
	st, err := DecodeState(dir, p.State)
	if err != nil {
		return err
	}
	if !force {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := NewClient(st.APISocket).Action(actx, ActionSendCtrlAltDel)
		cancel()
		if err == nil && waitGone(ctx, d, p, timeout) {
			return nil
		}
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill firecracker %d: %w", p.PID, err)
	}
	if !waitGone(ctx, d, p, killTimeout) {
		return fmt.Errorf("firecracker %d did not exit after SIGKILL", p.PID)
	}
	return nil
}

func waitGone(ctx context.Context, d *Driver, p vmm.Process, timeout time.Duration) bool {
	return vmm.WaitGone(ctx, d.Alive, p, timeout)
}

// Remove implements vmm.Adopter: a jailed VM's chroot and cgroup go with
// the VM.
func (d *Driver) Remove(ctx context.Context, dir string, p vmm.Process) error {
	st, err := DecodeState(dir, p.State)
	if err != nil {
		return err
	}
	if st.Jail == nil {
		return nil
	}
	return st.Jail.Remove()
}

// DialAgent implements vmm.Driver: the guest agent's vsock port through
// the hybrid vsock socket (a link into the jail under the jailer).
func (d *Driver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	return DialVsock(ctx, filepath.Join(dir, paths.FileVsockSocket), agentapi.AgentVsockPort)
}

// Status asks Firecracker for the instance state ("Running", "Paused",
// "Not started"); reconcile uses it to confirm an adopted VMM answers.
func Status(ctx context.Context, dir string, p vmm.Process) (string, error) {
	st, err := DecodeState(dir, p.State)
	if err != nil {
		return "", err
	}
	info, err := NewClient(st.APISocket).Describe(ctx)
	if err != nil {
		return "", err
	}
	return info.State, nil
}

// Jailed reports whether a recorded state is of a jailed VM.
func Jailed(state string) bool {
	if state == "" {
		return false
	}
	st, err := DecodeState("", state)
	return err == nil && st.Jail != nil
}
