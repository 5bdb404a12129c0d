package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/vmm"
)

// launch is one QEMU start: its command line and the descriptors it
// inherits (ExtraFiles: the first is fd 3).
type launch struct {
	args  []string
	files []*os.File
	// groups are QEMU's supplementary groups when it runs as the VM's
	// user (the group of /dev/kvm, when that is how KVM is reachable).
	groups []uint32
	// ramFD is the guest RAM memfd's descriptor number in QEMU.
	ramFD int
}

func (l *launch) add(f *os.File) int {
	l.files = append(l.files, f)
	return 2 + len(l.files)
}

// fdPath hands f to QEMU as a path it opens: reopening /proc/self/fd/N
// checks the file's own mode against QEMU's user but no directory above
// it, so QEMU needs no way into banger's 0700 state directory.
func (l *launch) fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(l.add(f)) }

func (l *launch) close() {
	for _, f := range l.files {
		f.Close()
	}
	l.files = nil
}

// prepare opens every file of spec for QEMU. When spec.UID is set, the
// VM's own files (disks, console) are given to that user with mode 0600,
// and the image's shared files are only opened for reading: the backing
// rootfs through a read-only descriptor, the kernel and initrd (which
// QEMU opens by name) through /proc/self/fd, so they must be readable by
// others already.
func prepare(spec vmm.Spec, ram guestRAM) (l *launch, err error) {
	l = &launch{}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	drop := spec.UID != 0
	src := sources{}
	shared := func(p string) (string, error) {
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("open %s: %w", p, err)
		}
		if drop {
			if err := checkWorldReadable(f, spec.UID); err != nil {
				f.Close()
				return "", err
			}
		}
		return l.fdPath(f), nil
	}
	own := func(p string, flag int, perm os.FileMode) (*os.File, error) {
		if !insideDir(spec.Dir, p) {
			// Only the VM's own files may change hands.
			return nil, fmt.Errorf("%s is not in the VM directory %s", p, spec.Dir)
		}
		f, err := os.OpenFile(p, flag|syscall.O_NOFOLLOW, perm)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", filepath.Base(p), err)
		}
		if drop {
			if err := handOver(f, spec.UID, spec.GID); err != nil {
				f.Close()
				return nil, err
			}
		}
		return f, nil
	}
	if src.kernel, err = shared(spec.Kernel); err != nil {
		return l, err
	}
	if spec.Initrd != "" {
		if src.initrd, err = shared(spec.Initrd); err != nil {
			return l, err
		}
	}
	for i, d := range spec.Disks {
		// Disks go in as fd sets: QEMU opens a disk read-only first and
		// then read-write, taking a matching descriptor from the set
		// each time, and never needs a right to the file itself.
		set := i + 1
		rw := []int{os.O_RDONLY}
		if !d.ReadOnly {
			rw = append(rw, os.O_RDWR)
		}
		for _, flag := range rw {
			f, err := own(d.Path, flag, 0)
			if err != nil {
				return l, err
			}
			src.addFDs = append(src.addFDs, fmt.Sprintf("fd=%d,set=%d", l.add(f), set))
		}
		src.disks = append(src.disks, fmt.Sprintf("/dev/fdset/%d", set))
	}
	// Backing layers (snapshot layers, the image's rootfs) are shared
	// by many VMs: each is opened read-only here, whatever its mode,
	// and never handed to anyone. Their fd sets follow the disks'.
	set := len(spec.Disks)
	for _, d := range spec.Disks {
		var chain []string
		for _, layer := range d.Backing {
			f, err := os.Open(layer.Path)
			if err != nil {
				return l, fmt.Errorf("open %s: %w", layer.Path, err)
			}
			set++
			src.addFDs = append(src.addFDs, fmt.Sprintf("fd=%d,set=%d", l.add(f), set))
			chain = append(chain, fmt.Sprintf("/dev/fdset/%d", set))
		}
		src.layers = append(src.layers, chain)
	}
	// The console log is written by the daemon (rotated, capped), not by
	// QEMU: QEMU only gets the console's listening socket.
	for _, s := range []struct {
		name string
		dst  *string
	}{{paths.FileConsoleSocket, &src.console}, {paths.FileQMPSocket, &src.qmp}, {paths.FileAgentSocket, &src.agent}} {
		f, err := listenUnix(filepath.Join(spec.Dir, s.name))
		if err != nil {
			return l, err
		}
		*s.dst = "fd=" + strconv.Itoa(l.add(f))
	}
	for _, name := range spec.ExtraSerialPorts {
		f, err := listenUnix(vmm.ExtraSerialSocket(spec.Dir, name))
		if err != nil {
			return l, err
		}
		src.extra = append(src.extra, "fd="+strconv.Itoa(l.add(f)))
	}
	if spec.Net.Mode == vmm.NetTap {
		// The TAP belongs to the daemon's user; QEMU gets an attached
		// queue and no right to the device.
		f, err := vmm.OpenTap(spec.Net.TapDevice)
		if err != nil {
			return l, err
		}
		src.tap = "fd=" + strconv.Itoa(l.add(f))
	}
	if ram.f != nil {
		// Last, so the other descriptors keep their numbers.
		src.mem = l.fdPath(ram.f)
		src.memPrivate = ram.private
		l.ramFD = 2 + len(l.files)
	}
	if drop && spec.Accel == "kvm" {
		if l.groups, err = kvmGroups(spec.UID); err != nil {
			return l, err
		}
	}
	l.args = render(spec, src)
	return l, nil
}

// checkWorldReadable refuses a shared image file QEMU's own user could
// not read. banger never changes an image file's owner or mode: a VM
// that could make the kernel or rootfs its own would change what every
// other VM of the image boots.
func checkWorldReadable(f *os.File, uid int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o004 == 0 {
		return fmt.Errorf("%s is mode %#o: QEMU runs as uid %d and may only read the image's files, so they must be readable by all (chmod 0644 %s), or set [vmm] uid_range = \"\" to run QEMU as root",
			f.Name(), fi.Mode().Perm(), uid, f.Name())
	}
	return nil
}

// handOver gives a VM's own file to its VMM user, readable by nobody
// else (the seed disk holds the VM's secrets). It acts on the open file,
// so a link swapped in meanwhile cannot redirect it.
func handOver(f *os.File, uid, gid int) error {
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("give %s to uid %d: %w", filepath.Base(f.Name()), uid, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", filepath.Base(f.Name()), err)
	}
	return nil
}

func insideDir(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && filepath.IsLocal(rel) && !strings.Contains(rel, string(filepath.Separator))
}

// listenUnix makes the listening socket QEMU serves a chardev on (it
// accepts one client at a time). The daemon creates it, so QEMU needs no
// write access to the VM directory; only the daemon's user may connect.
func listenUnix(path string) (*os.File, error) {
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", filepath.Base(path), err)
	}
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, err
	}
	f, err := ln.File()
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", filepath.Base(path), err)
	}
	return f, nil
}

// kvmGroups is how uid reaches /dev/kvm: QEMU opens it by path, so it
// needs the device's group when the device is not open to everyone.
func kvmGroups(uid int) ([]uint32, error) {
	fi, err := os.Stat("/dev/kvm")
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, errors.New("stat /dev/kvm")
	}
	switch perm := fi.Mode().Perm(); {
	case perm&0o006 == 0o006:
		return nil, nil
	case perm&0o060 == 0o060 && st.Gid != 0:
		return []uint32{st.Gid}, nil
	default:
		return nil, fmt.Errorf("/dev/kvm is mode %#o, group %d: QEMU runs as uid %d and cannot open it; give it a group (Debian: root:kvm 0660), or set [vmm] uid_range = \"\" to run QEMU as root", perm, st.Gid, uid)
	}
}
