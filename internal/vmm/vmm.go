// Package vmm defines what banger needs from a virtual machine monitor.
// Drivers live in subpackages (qemu, firecracker); they are the only code
// besides the shell-out layer that starts processes, because starting the
// VMM is their whole job.
//
// # The driver owns its VMM
//
// Everything that differs between VMMs is a method of Driver, so the
// daemon never asks which VMM a VM runs under: it asks the VM's driver.
// Driver is made of small interfaces, in the way of lima's pkg/driver:
//
//   - Lifecycle: Start, Stop, Alive, DialAgent, the part every driver
//     writes itself.
//   - Booter: what a boot needs besides the spec the daemon builds: the
//     kernel to boot from an image, the root disk (a qcow2 overlay or a
//     raw copy) and how to make it, extra kernel arguments, and a last
//     check of the finished Spec.
//   - Host: checks that this host can run the VMM (for `banger doctor`
//     and before a create), the KVM probe, whether a VM runs jailed.
//   - Adopter: what a restarted daemon asks a VMM it re-adopts (Status)
//     and what goes when a VM is deleted (Remove).
//
// Info describes a driver's capabilities (user networking, jailer,
// emulation without KVM, console kind, ...). The daemon's policy reads
// them: `--vmm auto` picks a Preferred driver when the VM fits its
// capabilities and the host passes its checks, and the driver that
// emulates and has user networking otherwise.
//
// Base implements every method but the Lifecycle ones with safe defaults
// (no capability, no extra arguments, a raw copy of the root disk,
// ErrNotSupported for Status and the KVM probe). A driver embeds it and
// overrides what it does differently; a fake driver for tests embeds it,
// writes Name, Start, Stop, Alive and DialAgent, and returns the Info
// its tests need (Base's claims nothing: no user networking, no
// emulation).
//
// A boot that hangs before the guest's init runs fails with
// ErrEarlyHang; the daemon retries such a boot once, deciding by
// errors.Is, never by an error's text.
package vmm

import (
	"context"
	"errors"
	"path/filepath"
	"time"
)

// ErrNotSupported is returned for an optional capability a driver lacks.
var ErrNotSupported = errors.New("not supported by this VMM")

// Disk is one block device. The root disk comes first. Path is the VM's
// own file, inside Spec.Dir: a driver that runs the VMM under Spec.UID
// hands it to that user.
type Disk struct {
	Path     string
	Format   string // "raw" or "qcow2"
	ReadOnly bool
	// Backing is the chain a qcow2 overlay reads through to, nearest
	// first: snapshot layers, then the image's rootfs. They are shared
	// by many VMs and only ever read. Empty means whatever the
	// overlay's header names.
	Backing []Layer
}

// Layer is one read-only file of a disk's backing chain.
type Layer struct {
	Path   string
	Format string // "raw" or "qcow2"
}

// Forward exposes a guest TCP port on 127.0.0.1 of the host.
type Forward struct {
	HostPort  int
	GuestPort int
}

// Spec is everything a driver needs to boot one VM.
type Spec struct {
	ID string
	// ProcessName names the VMM process; it carries the instance prefix so
	// one banger instance never mistakes another's processes for its own.
	ProcessName string
	// Dir holds the VM's sockets, pid file and logs. Socket paths in it
	// must stay under 108 bytes.
	Dir       string
	Kernel    string
	Initrd    string
	Cmdline   string
	Disks     []Disk
	CPUs      int
	MemoryMiB int
	Accel     string // "tcg" or "kvm"
	Egress    string // "all" or "none"
	// Forwards are host ports on 127.0.0.1 (user networking only).
	Forwards []Forward
	// Net says how the guest NIC is attached.
	Net Net
	// Jailer runs the VMM under Firecracker's jailer (chroot, own uid,
	// cgroup). Drivers without a jailer refuse it.
	Jailer bool
	// UID and GID are this VM's own unprivileged user for the VMM
	// process (QEMU, or Firecracker in its jail); 0 runs it as the
	// daemon's user. Only a root daemon sets them.
	UID, GID int
	// ExtraSerialPorts names extra virtio-serial ports, each backed by
	// the host socket ExtraSerialSocket(Dir, name) with nothing of banger
	// on either end. They exist for measurements (the benchmarks' raw
	// channel baseline); QEMU only.
	ExtraSerialPorts []string
	// Restore, when set, starts the VMM from a snapshot instead of
	// booting the kernel (drivers that implement Snapshotter).
	Restore *Restore
}

// ExtraSerialSocket is the host socket of an extra virtio-serial port.
func ExtraSerialSocket(dir, name string) string { return filepath.Join(dir, "port-"+name+".sock") }

// Network modes.
const (
	NetUser = "user" // the VMM's own user-mode stack (QEMU slirp), forwards on 127.0.0.1
	NetTap  = "tap"  // a host TAP device on banger's bridge
)

// Net is the guest NIC's attachment.
type Net struct {
	Mode string // NetUser (the default when empty) or NetTap
	// TapDevice is the host TAP interface (tap mode); MAC the guest NIC's
	// address, fixed per VM so the guest sees the same NIC on every boot.
	TapDevice string
	MAC       string
}

// Process identifies a running VMM. A PID alone is not enough after a
// daemon restart: the start time guards against PID reuse.
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	// State is the driver's own record of the VM (sockets, jail), opaque
	// to the daemon, which persists it as store.VM.VMMStateJSON and hands
	// it back with the PID.
	State string `json:"state,omitempty"`
}

// WaitGone polls alive until p has exited, timeout passes or ctx ends,
// and says whether p is gone.
func WaitGone(ctx context.Context, alive func(Process) bool, p Process, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !alive(p) {
			return true
		}
		select {
		case <-ctx.Done():
			return !alive(p)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return !alive(p)
}
