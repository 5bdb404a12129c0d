// Package qemu drives QEMU's microvm machine: KVM where a real boot probe
// proves it works, TCG otherwise. QEMU runs detached so it outlives the
// banger daemon; the daemon controls it over QMP and reaches the guest
// agent through a virtio-serial port backed by a Unix socket. QEMU runs
// under its seccomp sandbox and, for a root daemon, as the VM's own
// unprivileged user (launch.go).
//
// Guest RAM is a memfd the driver makes (memory.go), so a snapshot
// (snapshot.go) streams only device state through QEMU's migration
// (to a descriptor: QEMU may not exec) and copies RAM from the memfd;
// restores map one sealed copy of a snapshot's RAM copy-on-write.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Binary is the QEMU system emulator banger runs.
const Binary = "qemu-system-x86_64"

// AgentPortName is the virtio-serial port name the guest agent opens
// (/dev/virtio-ports/banger.agent).
const AgentPortName = "banger.agent"

// Driver is the QEMU microvm driver.
type Driver struct {
	vmm.Base
	// Binary overrides the emulator path (tests, odd installs).
	Binary string

	// shared holds the sealed memory of snapshots that VMs were
	// restored from with Restore.Share.
	shared sharedRAM
	// version caches `qemu-system-x86_64 --version` (SnapshotCompat).
	versionMu sync.Mutex
	version   string
}

var (
	_ vmm.Driver      = (*Driver)(nil)
	_ vmm.Snapshotter = (*Driver)(nil)
)

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Info implements vmm.Driver: QEMU emulates where KVM fails, has slirp
// for user networking, serves its console on a socket, and always runs
// as the VM's own user (for a root daemon).
func (d *Driver) Info() vmm.Info {
	return vmm.Info{
		Title:            "QEMU",
		Emulates:         true,
		UserNet:          true,
		ExtraSerialPorts: true,
		Console:          vmm.ConsoleSocket,
		OwnUser:          vmm.OwnUserAlways,
	}
}

// RootDisk implements vmm.Booter: a qcow2 overlay on the image's rootfs.
// The backing file is named here, not taken from the overlay's header:
// QEMU gets it as a read-only descriptor (launch.go).
func (d *Driver) RootDisk(img vmm.Image, dir string) vmm.Disk {
	return vmm.Disk{Path: filepath.Join(dir, paths.FileRootDisk), Format: "qcow2", Backing: []vmm.Layer{{Path: img.Rootfs, Format: "raw"}}}
}

// MakeRootDisk implements vmm.Booter.
func (d *Driver) MakeRootDisk(ctx context.Context, r system.Runner, img vmm.Image, root vmm.Disk) error {
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2",
		"-b", img.Rootfs, "-F", "raw", root.Path); err != nil {
		return fmt.Errorf("create root overlay: %w", err)
	}
	return nil
}

// KernelArgs implements vmm.Booter: TCGKernelArgs under TCG.
func (d *Driver) KernelArgs(accel string) []string {
	if accel == "kvm" {
		return nil
	}
	return TCGKernelArgs()
}

// Validate implements vmm.Booter.
func (d *Driver) Validate(spec vmm.Spec) error {
	if spec.Jailer {
		return errors.New("qemu has no jailer; --jailer is a Firecracker option")
	}
	for _, s := range []string{paths.FileQMPSocket, paths.FileAgentSocket, paths.FileConsoleSocket} {
		if err := paths.CheckSocketPath(filepath.Join(spec.Dir, s)); err != nil {
			return err
		}
	}
	return nil
}

// probeTimeout bounds the KVM probe's boot.
const probeTimeout = 20 * time.Second

// ProbeKVM implements vmm.Host with the image's own kernel.
func (d *Driver) ProbeKVM(ctx context.Context, img vmm.Image) (bool, string, error) {
	ok, why := ProbeKVM(ctx, d.Binary, img.Kernel, probeTimeout)
	return ok, why, nil
}

// Status implements vmm.Adopter over QMP.
func (d *Driver) Status(ctx context.Context, dir string, p vmm.Process) (string, error) {
	return Status(dir)
}

func (d *Driver) binary() string {
	if d.Binary != "" {
		return d.Binary
	}
	return Binary
}

// Sandbox is QEMU's seccomp filter: besides the default deny list, no
// obsolete system calls, no set*id/setsid and friends, no fork or exec,
// no scheduler or resource changes. A guest that takes QEMU over keeps
// what QEMU holds and nothing more. It rules out -daemonize (a fork
// after the filter is on) and -runas (setuid after it); Start does both
// jobs itself instead.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// optValue quotes s for a QEMU key=value option list, where a comma
// ends the value unless doubled.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// sources says how QEMU reaches each of the VM's files: by path, or by a
// descriptor it inherited (/proc/self/fd/N, fd=N). Option values here
// are raw; render quotes them.
type sources struct {
	kernel, initrd string
	// disks are the disks' file names; layers, per disk, the file names
	// of its backing chain, nearest first (none keeps the overlay
	// header's).
	disks  []string
	layers [][]string
	// console, qmp and agent are the sockets' addresses: "path=P" or
	// "fd=N".
	console, qmp, agent string
	// extra are the sockets of spec.ExtraSerialPorts, in order.
	extra []string
	// tap is the tap netdev's "ifname=..." or "fd=N" (tap mode).
	tap string
	// addFDs are the descriptors of /dev/fdset/N names: -add-fd values.
	addFDs []string
	// mem is the guest RAM's memfd as QEMU opens it (/proc/self/fd/N);
	// empty has QEMU make its own memfd. memPrivate maps it
	// copy-on-write (a sealed snapshot memfd shared by restores).
	mem        string
	memPrivate bool
}

// pathSources has QEMU open everything by path, as its own user.
func pathSources(spec vmm.Spec) sources {
	src := sources{
		kernel: spec.Kernel, initrd: spec.Initrd,
		console: "path=" + optValue(filepath.Join(spec.Dir, paths.FileConsoleSocket)),
		qmp:     "path=" + optValue(filepath.Join(spec.Dir, paths.FileQMPSocket)),
		agent:   "path=" + optValue(filepath.Join(spec.Dir, paths.FileAgentSocket)),
		tap:     "ifname=" + optValue(spec.Net.TapDevice) + ",script=no,downscript=no",
	}
	for _, d := range spec.Disks {
		src.disks = append(src.disks, d.Path)
		var chain []string
		for _, l := range d.Backing {
			chain = append(chain, l.Path)
		}
		src.layers = append(src.layers, chain)
	}
	for _, name := range spec.ExtraSerialPorts {
		src.extra = append(src.extra, "path="+optValue(vmm.ExtraSerialSocket(spec.Dir, name)))
	}
	return src
}

// Args renders the QEMU command line for spec with every file named by
// its path (commas doubled where QEMU parses the value as an option
// list). It is a pure function so the exact command line is unit-tested;
// Start renders the same line with inherited descriptors instead.
func Args(spec vmm.Spec) []string { return render(spec, pathSources(spec)) }

func render(spec vmm.Spec, src sources) []string {
	cpu := "max" // TCG's default CPU lacks AVX2, which the agents' binaries need
	accel := "tcg"
	if spec.Accel == "kvm" {
		cpu, accel = "host", "kvm"
	}
	if accel == "tcg" && tcgTBSizeMiB > 0 {
		// QEMU 7.2's default translation cache is 1 GiB, which an idle
		// guest fills over time (host RSS); tcgTBSizeMiB is measured.
		accel += ",tb-size=" + strconv.Itoa(tcgTBSizeMiB)
	}
	name := optValue(spec.ProcessName)
	args := []string{
		"-name", name + ",process=" + name,
		"-M", "microvm,acpi=on,memory-backend=mem", "-accel", accel, "-cpu", cpu,
		"-smp", strconv.Itoa(spec.CPUs), "-m", strconv.Itoa(spec.MemoryMiB),
		"-object", memObject(spec, src),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-sandbox", Sandbox,
	}
	for _, a := range src.addFDs {
		args = append(args, "-add-fd", a)
	}
	args = append(args,
		// The console goes to a listening socket that the daemon reads
		// into a size-capped, rotated console.log. A file QEMU writes
		// itself would grow without bound while no daemon runs; with
		// no client connected QEMU 7.2 drops the serial output instead
		// (bounded, never blocking the guest or dying).
		"-chardev", "socket,id=console,"+src.console+",server=on,wait=off",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,"+src.qmp+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		// -kernel, -initrd and -append take their value whole: no quoting.
		"-kernel", src.kernel,
		"-append", spec.Cmdline,
	)
	// A registered image may have a kernel that needs no initrd.
	if src.initrd != "" {
		args = append(args, "-initrd", src.initrd)
	}
	for i, d := range spec.Disks {
		drive := fmt.Sprintf("id=d%d,if=none,driver=%s,discard=unmap,file.driver=file,file.filename=%s", i, d.Format, optValue(src.disks[i]))
		drive += backingOpts(d.Backing, src.layers[i])
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=d%d", i))
	}
	args = append(args,
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,"+src.agent+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+AgentPortName,
	)
	for i, name := range spec.ExtraSerialPorts {
		id := fmt.Sprintf("xport%d", i)
		args = append(args,
			"-chardev", "socket,id="+id+","+src.extra[i]+",server=on,wait=off",
			"-device", "virtserialport,chardev="+id+",name="+optValue(name))
	}
	args = append(args, netArgs(spec, src)...)
	// Balloon with free page reporting gives freed guest memory back.
	args = append(args, "-device", "virtio-balloon-device,free-page-reporting=on")
	// A VM generation ID: a restored QEMU makes its own, and a guest
	// kernel that reads it reseeds its RNG. Every VM has it, so a saved
	// machine and its restores have the same devices.
	args = append(args, "-device", "vmgenid,guid=auto")
	if spec.Restore != nil {
		// The state arrives over QMP (migrate-incoming) once the
		// driver has handed QEMU the state file.
		args = append(args, "-incoming", "defer")
	}
	return args
}

// tcgTBSizeMiB is the TCG translation cache size (MiB). The cache fills
// to its size within a boot and stays resident: measured on an idle
// 1 GiB agent-image VM 60 s after its agent answered (QEMU 7.2, busy
// 2-core host), QEMU's anonymous memory was 506 MiB with the default
// (1 GiB cache), 327 MiB with 256, 180 MiB with 128, 111 MiB with 64,
// at the same boot time and idle CPU (noise: 6-12% of a core). 128
// keeps room for the agents' code (node). A variable so a measurement
// can set it (0: QEMU's default).
var tcgTBSizeMiB = 128

// memObject is the guest RAM's backend: the driver's memfd, or, for a
// command line rendered with paths, a memfd QEMU makes itself. Both
// have the RAM block id "mem", so either can be saved and restored as
// the other.
func memObject(spec vmm.Spec, src sources) string {
	size := strconv.Itoa(spec.MemoryMiB) + "M"
	if src.mem == "" {
		return "memory-backend-memfd,id=mem,size=" + size + ",share=on"
	}
	share := "on"
	if src.memPrivate {
		share = "off"
	}
	return "memory-backend-file,id=mem,size=" + size + ",mem-path=" + optValue(src.mem) + ",share=" + share
}

// backingOpts renders a disk's backing chain as nested backing.*
// options: QEMU opens each layer by the name given here (a read-only
// descriptor's fd set), never by the path an overlay's header records.
func backingOpts(chain []vmm.Layer, names []string) string {
	var b strings.Builder
	prefix := ""
	for i, l := range chain {
		if i >= len(names) {
			break
		}
		prefix += "backing."
		format := l.Format
		if format == "" {
			format = "raw"
		}
		b.WriteString("," + prefix + "driver=" + optValue(format) + "," + prefix + "file.driver=file," + prefix + "file.filename=" + optValue(names[i]))
	}
	return b.String()
}

// netArgs attaches the guest NIC. In tap mode the TAP device already
// exists on banger's bridge (the daemon made it); QEMU only uses it, so
// no helper scripts run and no forwards exist: the host reaches the guest
// at its own address.
func netArgs(spec vmm.Spec, src sources) []string {
	if spec.Net.Mode == vmm.NetTap {
		dev := "virtio-net-device,netdev=n0"
		if spec.Net.MAC != "" {
			dev += ",mac=" + optValue(spec.Net.MAC)
		}
		return []string{"-netdev", "tap,id=n0," + src.tap, "-device", dev}
	}
	netdev := "user,id=n0"
	if spec.Egress == "none" {
		// restrict=on cuts the guest off from everything; forwards still work.
		netdev += ",restrict=on"
	}
	for _, f := range spec.Forwards {
		netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", f.HostPort, f.GuestPort)
	}
	return []string{"-netdev", netdev, "-device", "virtio-net-device,netdev=n0"}
}

// startWait bounds how long QEMU may take to set the machine up and
// answer on QMP.
const startWait = 60 * time.Second

// Start implements vmm.Driver. QEMU is started in a session of its own
// and not tied to the daemon, so it survives daemon restarts; the daemon
// reaps it while it lives, init after. Every file QEMU uses is opened
// here and inherited, and when spec.UID is set QEMU runs as that user
// from its first instruction: it needs no path into banger's state
// directory, the VM's own disks and console are handed to that user, and
// the image's shared files are only read, never chowned or chmoded.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	if err := d.Validate(spec); err != nil {
		return vmm.Process{}, err
	}
	var meta *snapMeta
	if spec.Restore != nil {
		m, err := readSnapshot(spec.Restore.Dir)
		if err != nil {
			return vmm.Process{}, err
		}
		if err := m.fits(spec); err != nil {
			return vmm.Process{}, fmt.Errorf("restore snapshot %s: %w", spec.Restore.Dir, err)
		}
		meta = &m
		// The machine is the saved one: its kernel, initrd and
		// command line (fw_cfg and the kernel's option ROM), where the
		// daemon does not name them.
		if spec.Kernel == "" {
			spec.Kernel = m.Kernel
		}
		if spec.Initrd == "" {
			spec.Initrd = m.Initrd
		}
		spec.Cmdline = m.Cmdline
	}
	ram, err := d.guestRAM(ctx, spec, meta)
	if err != nil {
		return vmm.Process{}, err
	}
	defer ram.close()
	l, err := prepare(spec, ram)
	if err != nil {
		ram.abandon()
		return vmm.Process{}, err
	}
	defer l.close()
	logPath := filepath.Join(spec.Dir, paths.FileQEMULog)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		ram.abandon()
		return vmm.Process{}, fmt.Errorf("open qemu log: %w", err)
	}
	defer logf.Close()
	// Not CommandContext: the VMM must outlive the boot's context.
	cmd := exec.Command(d.binary(), l.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.ExtraFiles = l.files
	// Its own session: a signal to the daemon's process group never
	// reaches the VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if spec.UID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(spec.UID), Gid: uint32(spec.GID), Groups: l.groups}
	}
	if err := cmd.Start(); err != nil {
		ram.abandon()
		return vmm.Process{}, fmt.Errorf("start qemu: %w", err)
	}
	// QEMU has its copies; ours would keep the sockets accepting (into
	// the backlog) after QEMU is gone.
	l.close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	p := vmm.Process{PID: cmd.Process.Pid}
	fail := func(err error) (vmm.Process, error) {
		_ = cmd.Process.Kill()
		<-exited
		ram.abandon()
		d.shared.drop(p)
		return vmm.Process{}, fmt.Errorf("%w: %s", err, system.TailFile(logPath, 1024))
	}
	st, err := system.ProcStartTime(cmd.Process.Pid)
	if err != nil {
		return fail(errors.New("qemu exited right after start"))
	}
	p.StartTime = st
	// A shared memfd is held by this VM from here on; Stop (or a
	// failed start) drops it.
	ram.held(p)
	if err := waitQMP(ctx, filepath.Join(spec.Dir, paths.FileQMPSocket), exited); err != nil {
		return fail(err)
	}
	if meta != nil {
		if err := d.incoming(ctx, spec, *meta, exited, p.PID, l.ramFD); err != nil {
			return fail(fmt.Errorf("restore snapshot %s: it is unusable (truncated or corrupt) or was saved by another QEMU or machine; delete it or boot cold: %w", spec.Restore.Dir, err))
		}
	}
	p.State = procState{
		RAM: ram.kind, RAMFD: l.ramFD,
		Kernel: spec.Kernel, Initrd: spec.Initrd, Cmdline: spec.Cmdline,
		MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Accel: spec.Accel,
	}.encode()
	return p, nil
}

// waitQMP waits until QEMU greets on its QMP socket, which it does once
// the machine is set up and its main loop runs.
func waitQMP(ctx context.Context, path string, exited <-chan struct{}) error {
	deadline := time.Now().Add(startWait)
	var last error
	for time.Now().Before(deadline) {
		if last = qmpGreets(path); last == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("qemu exited during start")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("qemu did not answer on QMP within %s: %w", startWait, last)
}

func qmpGreets(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(c, buf, 6)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), `{"QMP"`) {
		return fmt.Errorf("unexpected QMP greeting %q", buf[:n])
	}
	return nil
}

// Alive implements vmm.Driver.
func (d *Driver) Alive(p vmm.Process) bool {
	return p.PID > 0 && system.ProcAlive(p.PID, p.StartTime)
}

// Stop implements vmm.Driver.
func (d *Driver) Stop(ctx context.Context, dir string, p vmm.Process, force bool, timeout time.Duration) error {
	// Whatever the outcome, this VM no longer keeps a snapshot's
	// shared memory in the driver's cache.
	defer d.shared.drop(p)
	if !d.Alive(p) {
		return nil
	}
	qmpPath := filepath.Join(dir, paths.FileQMPSocket)
	if !force {
		// ACPI power button: systemd shuts down cleanly and QEMU exits
		// (-no-reboot turns the final reset into an exit).
		if err := qmpRun(qmpPath, `{"execute":"system_powerdown"}`); err == nil {
			if waitGone(ctx, d, p, timeout) {
				return nil
			}
		}
	}
	_ = qmpRun(qmpPath, `{"execute":"quit"}`)
	if waitGone(ctx, d, p, 3*time.Second) {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill qemu %d: %w", p.PID, err)
	}
	if !waitGone(ctx, d, p, 5*time.Second) {
		return fmt.Errorf("qemu %d did not exit after SIGKILL", p.PID)
	}
	return nil
}

func waitGone(ctx context.Context, d *Driver, p vmm.Process, timeout time.Duration) bool {
	return vmm.WaitGone(ctx, d.Alive, p, timeout)
}

// Status asks QEMU over QMP whether the VM is running; reconcile uses it to
// confirm that an adopted PID really is our VMM and responsive.
func Status(dir string) (string, error) {
	out, err := qmpRunOut(filepath.Join(dir, paths.FileQMPSocket), `{"execute":"query-status"}`)
	if err != nil {
		return "", err
	}
	// {"return": {"status": "running", "singlestep": false, "running": true}}
	s := string(out)
	if i := strings.Index(s, `"status": "`); i >= 0 {
		rest := s[i+len(`"status": "`):]
		if j := strings.IndexByte(rest, '"'); j >= 0 {
			return rest[:j], nil
		}
	}
	return "", fmt.Errorf("unexpected query-status reply: %s", s)
}

func qmpRun(path, cmd string) error {
	_, err := qmpRunOut(path, cmd)
	return err
}

// qmpTimeout bounds one QMP exchange (greeting, capabilities, command):
// a QEMU that accepts the connection but never answers must not hang
// Stop or reconcile.
var qmpTimeout = 10 * time.Second

func qmpRunOut(path, cmd string) ([]byte, error) {
	mon, err := qmp.NewSocketMonitor("unix", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect qmp: %w", err)
	}
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		if err := mon.Connect(); err != nil {
			done <- result{err: fmt.Errorf("qmp handshake: %w", err)}
			return
		}
		out, err := mon.Run([]byte(cmd))
		if err != nil {
			err = fmt.Errorf("qmp %s: %w", cmd, err)
		}
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		mon.Disconnect()
		return r.out, r.err
	case <-time.After(qmpTimeout):
		// Closing the connection unblocks the exchange above.
		mon.Disconnect()
		return nil, fmt.Errorf("qmp %s: no answer within %s", cmd, qmpTimeout)
	}
}

// DialAgent implements vmm.Driver: the agent's virtio-serial port is a
// chardev socket QEMU serves; it takes one client at a time.
func (d *Driver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	var dl net.Dialer
	return dl.DialContext(ctx, "unix", filepath.Join(dir, paths.FileAgentSocket))
}

// TCGKernelArgs are kernel arguments a guest needs under TCG. The guest's
// early TSC calibration against the emulated PIT fails when the host is
// busy ("could not calculate TSC khz") and the kernel then hangs before
// printing anything; telling it the TSC rate skips that calibration. Under
// TCG the guest TSC ticks at the host's rate.
func TCGKernelArgs() []string {
	return []string{"tsc_early_khz=" + strconv.Itoa(hostTSCkHz())}
}

func hostTSCkHz() int {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 2000000
	}
	return parseCPUkHz(string(data))
}

// parseCPUkHz reads the first "cpu MHz" line of /proc/cpuinfo.
func parseCPUkHz(cpuinfo string) int {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err == nil && mhz > 100 {
			return int(mhz * 1000)
		}
	}
	return 2000000
}
