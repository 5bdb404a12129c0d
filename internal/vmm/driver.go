package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
)

// ErrEarlyHang says a guest hung early in its boot: its agent never
// answered and nothing of the guest's init reached the console. Under
// TCG about one boot in ten stalls like this and the next identical boot
// is fine, so a boot failing with it (errors.Is) is retried once.
var ErrEarlyHang = errors.New("guest hung in early boot")

// Driver is a VMM: its lifecycle and everything else about it that the
// daemon needs. Embed Base to get safe defaults for all but Lifecycle.
type Driver interface {
	Lifecycle
	Booter
	Host
	Adopter
	// Info describes what the driver can do; the daemon's choices read
	// it, never the driver's name.
	Info() Info
}

// Lifecycle starts and stops VMs. VMM processes must outlive the daemon.
type Lifecycle interface {
	// Name is the VMM's name in store.VM.VMM and `--vmm`.
	Name() string
	Start(ctx context.Context, spec Spec) (Process, error)
	// Stop asks the guest to power off and waits up to timeout, then kills
	// the VMM. force skips the polite part.
	Stop(ctx context.Context, dir string, p Process, force bool, timeout time.Duration) error
	Alive(p Process) bool
	// DialAgent connects to the host end of the guest agent's channel.
	DialAgent(ctx context.Context, dir string) (net.Conn, error)
}

// Booter is what a boot needs from the driver besides the Spec.
type Booter interface {
	// Kernel is the kernel of img this VMM boots; an image without one
	// fails with a hint.
	Kernel(img Image) (string, error)
	// RootDisk is the VM's root disk in the VM directory dir.
	RootDisk(img Image, dir string) Disk
	// MakeRootDisk creates root (as RootDisk named it) from img's rootfs,
	// which it must never write: images are shared.
	MakeRootDisk(ctx context.Context, r system.Runner, img Image, root Disk) error
	// KernelArgs are extra guest kernel arguments under accel ("tcg" or
	// "kvm").
	KernelArgs(accel string) []string
	// Validate refuses a spec the VMM cannot boot, before anything starts.
	Validate(spec Spec) error
}

// Host is what the driver needs from, and knows about, the host.
type Host interface {
	// HostChecks say whether this host can run the VMM.
	HostChecks(ctx context.Context, r system.Runner, need Need) []doctor.Check
	// ProbeKVM boots a kernel of img under KVM to learn whether KVM
	// really works here (/dev/kvm opening is not enough); ErrNotSupported
	// when the driver has no probe.
	ProbeKVM(ctx context.Context, img Image) (ok bool, why string, err error)
	// UsesJailer says whether a VM runs under the jailer: requested at
	// create, the driver's configuration, or p's recorded state.
	UsesJailer(requested bool, p Process) bool
}

// Adopter is what a daemon asks about a VM it did not start itself.
type Adopter interface {
	// Status asks a running VMM for its state over its control socket;
	// reconcile logs it for a re-adopted VM. ErrNotSupported when the
	// VMM has no such socket.
	Status(ctx context.Context, dir string, p Process) (string, error)
	// Remove removes what the driver keeps outside the VM directory (a
	// jail); the daemon calls it when it deletes the VM.
	Remove(ctx context.Context, dir string, p Process) error
}

// Info is a driver's capabilities.
type Info struct {
	// Title names the VMM in messages ("QEMU").
	Title string
	// Emulates: the VMM boots guests without KVM too (TCG). One that
	// does not is KVM or nothing.
	Emulates bool
	// UserNet: the VMM has a user-mode network stack (--net user);
	// without it a VM needs a TAP device.
	UserNet bool
	// Jailer: the VMM can run under a jailer (--jailer).
	Jailer bool
	// ExtraSerialPorts: the VMM offers Spec.ExtraSerialPorts.
	ExtraSerialPorts bool
	// Console is how the guest's serial console reaches the host.
	Console Console
	// OwnUser is when the VMM runs as the VM's own user (Spec.UID).
	OwnUser OwnUser
	// Preferred: `--vmm auto` picks this VMM over one that emulates
	// whenever it can run the VM (lighter, boots faster).
	Preferred bool
}

// Console is how a VMM delivers the guest's serial console.
type Console int

const (
	// ConsoleSocket: the VMM serves the console on a listening socket
	// (paths.FileConsoleSocket) that the daemon copies into a rotated
	// console.log, and drops output while nobody reads.
	ConsoleSocket Console = iota
	// ConsoleFile: the VMM appends to console.log itself; the daemon
	// trims it.
	ConsoleFile
)

// OwnUser is when a VMM process runs as the VM's own user.
type OwnUser int

// The zero value is the safe one: a driver that says nothing runs every
// VMM as the VM's own user, never as the daemon's (root).
const (
	// OwnUserAlways: every VM's VMM runs as its own user.
	OwnUserAlways OwnUser = iota
	// OwnUserJailed: only a jailed VMM runs as the VM's user (the
	// jailer drops to it; unjailed, the VMM cannot).
	OwnUserJailed
	// OwnUserNever: the VMM runs as the daemon's user; Spec.UID is unset.
	// Only a test driver that starts no process says this.
	OwnUserNever
)

// Image is what an image offers a driver: paths of its files, empty
// when the image has no such file.
type Image struct {
	Name    string
	Kernel  string // compressed kernel (bzImage)
	Vmlinux string // uncompressed ELF kernel
	Initrd  string
	Rootfs  string // raw root filesystem, shared by the image's VMs
}

// Need says what host checks are for.
type Need struct {
	// Required makes a missing piece a failure (a VM asked for this
	// VMM), not a warning.
	Required bool
	// Jailer adds the jailer's checks.
	Jailer bool
}

// Base is embedded by drivers for safe defaults of everything but
// Lifecycle: no capabilities, no host checks, a raw copy of the root
// disk, the image's compressed kernel, no extra kernel arguments.
type Base struct{}

// Info implements Driver: no capabilities.
func (Base) Info() Info { return Info{} }

// Kernel implements Booter: the image's compressed kernel.
func (Base) Kernel(img Image) (string, error) {
	if img.Kernel == "" {
		return "", fmt.Errorf("image %q has no kernel", img.Name)
	}
	return img.Kernel, nil
}

// RootDisk implements Booter: a raw copy of the image's rootfs.
func (Base) RootDisk(img Image, dir string) Disk {
	return Disk{Path: filepath.Join(dir, paths.FileRootRaw), Format: "raw"}
}

// MakeRootDisk implements Booter: a reflinked (or sparse) copy.
func (Base) MakeRootDisk(ctx context.Context, r system.Runner, img Image, root Disk) error {
	if err := system.CloneFile(ctx, img.Rootfs, root.Path); err != nil {
		return fmt.Errorf("clone root disk: %w", err)
	}
	return nil
}

// KernelArgs implements Booter: none.
func (Base) KernelArgs(accel string) []string { return nil }

// Validate implements Booter: any spec.
func (Base) Validate(spec Spec) error { return nil }

// HostChecks implements Host: nothing to check.
func (Base) HostChecks(ctx context.Context, r system.Runner, need Need) []doctor.Check { return nil }

// ProbeKVM implements Host: no probe.
func (Base) ProbeKVM(ctx context.Context, img Image) (bool, string, error) {
	return false, "", ErrNotSupported
}

// UsesJailer implements Host: no jailer.
func (Base) UsesJailer(requested bool, p Process) bool { return false }

// Status implements Adopter: no control socket.
func (Base) Status(ctx context.Context, dir string, p Process) (string, error) {
	return "", ErrNotSupported
}

// Remove implements Adopter: nothing outside the VM directory.
func (Base) Remove(ctx context.Context, dir string, p Process) error { return nil }
