// Package qemu drives QEMU's microvm machine: KVM where a real boot probe
// proves it works, TCG otherwise. QEMU runs daemonized so it outlives the
// banger daemon; the daemon controls it over QMP and reaches the guest
// agent through a virtio-serial port backed by a Unix socket.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	// Binary overrides the emulator path (tests, odd installs).
	Binary string
}

var _ vmm.Driver = (*Driver)(nil)

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

func (d *Driver) binary() string {
	if d.Binary != "" {
		return d.Binary
	}
	return Binary
}

// Args renders the QEMU command line for spec. It is a pure function so
// the exact command line is unit-tested.
func Args(spec vmm.Spec) []string {
	dir := spec.Dir
	cpu := "max" // TCG's default CPU lacks AVX2, which the agents' binaries need
	accel := "tcg"
	if spec.Accel == "kvm" {
		cpu, accel = "host", "kvm"
	}
	args := []string{
		"-name", spec.ProcessName + ",process=" + spec.ProcessName,
		"-M", "microvm,acpi=on", "-accel", accel, "-cpu", cpu,
		"-smp", strconv.Itoa(spec.CPUs), "-m", strconv.Itoa(spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// The console goes to a file, never to a pipe the daemon holds:
		// QEMU must not block or die when the daemon goes away.
		"-serial", "file:" + filepath.Join(dir, paths.FileConsoleLog),
		"-qmp", "unix:" + filepath.Join(dir, paths.FileQMPSocket) + ",server=on,wait=off",
		"-pidfile", filepath.Join(dir, paths.FilePID),
		"-kernel", spec.Kernel,
		"-append", spec.Cmdline,
	}
	// A registered image may have a kernel that needs no initrd.
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	for i, d := range spec.Disks {
		drive := fmt.Sprintf("id=d%d,file=%s,format=%s,if=none,discard=unmap", i, d.Path, d.Format)
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=d%d", i))
	}
	args = append(args,
		"-device", "virtio-serial-device",
		"-chardev", "socket,path="+filepath.Join(dir, paths.FileAgentSocket)+",server=on,wait=off,id=agent",
		"-device", "virtserialport,chardev=agent,name="+AgentPortName,
	)
	for i, name := range spec.ExtraSerialPorts {
		id := fmt.Sprintf("xport%d", i)
		args = append(args,
			"-chardev", "socket,path="+vmm.ExtraSerialSocket(dir, name)+",server=on,wait=off,id="+id,
			"-device", "virtserialport,chardev="+id+",name="+name)
	}
	args = append(args, netArgs(spec)...)
	// Balloon with free page reporting gives freed guest memory back.
	args = append(args, "-device", "virtio-balloon-device,free-page-reporting=on")
	return args
}

// netArgs attaches the guest NIC. In tap mode the TAP device already
// exists on banger's bridge (the daemon made it); QEMU only opens it, so
// no helper scripts run and no forwards exist: the host reaches the guest
// at its own address.
func netArgs(spec vmm.Spec) []string {
	if spec.Net.Mode == vmm.NetTap {
		dev := "virtio-net-device,netdev=n0"
		if spec.Net.MAC != "" {
			dev += ",mac=" + spec.Net.MAC
		}
		return []string{"-netdev", "tap,id=n0,ifname=" + spec.Net.TapDevice + ",script=no,downscript=no", "-device", dev}
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

// Start implements vmm.Driver. QEMU daemonizes itself: the launcher exits
// once the VM is set up (or failed), and the VM process is re-parented
// away from the daemon, so it survives daemon restarts.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	if spec.Jailer {
		return vmm.Process{}, errors.New("qemu has no jailer; --jailer is a Firecracker option")
	}
	for _, s := range []string{paths.FileQMPSocket, paths.FileAgentSocket} {
		if err := paths.CheckSocketPath(filepath.Join(spec.Dir, s)); err != nil {
			return vmm.Process{}, err
		}
	}
	_ = os.Remove(filepath.Join(spec.Dir, paths.FilePID))
	logf, err := os.OpenFile(filepath.Join(spec.Dir, paths.FileQEMULog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return vmm.Process{}, fmt.Errorf("open qemu log: %w", err)
	}
	defer logf.Close()
	args := append(Args(spec), "-daemonize")
	cmd := exec.CommandContext(ctx, d.binary(), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	// Its own session: a signal to the daemon's process group never
	// reaches the VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		return vmm.Process{}, fmt.Errorf("start qemu: %w: %s", err, tailFile(filepath.Join(spec.Dir, paths.FileQEMULog), 1024))
	}
	pidData, err := os.ReadFile(filepath.Join(spec.Dir, paths.FilePID))
	if err != nil {
		return vmm.Process{}, fmt.Errorf("read qemu pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidData)))
	if err != nil {
		return vmm.Process{}, fmt.Errorf("parse qemu pid file: %w", err)
	}
	st, err := system.ProcStartTime(pid)
	if err != nil {
		return vmm.Process{}, fmt.Errorf("qemu exited right after start: %s", tailFile(filepath.Join(spec.Dir, paths.FileQEMULog), 1024))
	}
	return vmm.Process{PID: pid, StartTime: st}, nil
}

// Alive implements vmm.Driver.
func (d *Driver) Alive(p vmm.Process) bool {
	return p.PID > 0 && system.ProcAlive(p.PID, p.StartTime)
}

// Stop implements vmm.Driver.
func (d *Driver) Stop(ctx context.Context, dir string, p vmm.Process, force bool, timeout time.Duration) error {
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

func qmpRunOut(path, cmd string) ([]byte, error) {
	mon, err := qmp.NewSocketMonitor("unix", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect qmp: %w", err)
	}
	if err := mon.Connect(); err != nil {
		return nil, fmt.Errorf("qmp handshake: %w", err)
	}
	defer mon.Disconnect()
	out, err := mon.Run([]byte(cmd))
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return out, nil
}

// DialAgent implements vmm.Driver: the agent's virtio-serial port is a
// chardev socket QEMU serves; it takes one client at a time.
func (d *Driver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	var dl net.Dialer
	return dl.DialContext(ctx, "unix", filepath.Join(dir, paths.FileAgentSocket))
}

func tailFile(path string, n int64) string {
	return system.TailFile(path, n)
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
