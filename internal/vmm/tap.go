package vmm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tapFlags are those banger's persistent TAPs are made with
// (network.Kernel.EnsureTap); attaching must name the same kind.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// attachTap opens a queue of the existing TAP name. It needs
// CAP_NET_ADMIN or to be the TAP's owner.
func attachTap(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("attach to tap %s: %w", name, err)
	}
	return fd, nil
}

// OpenTap attaches to the persistent TAP name and returns the queue's
// descriptor, to be inherited by a VMM that then needs no right to the
// device itself (it may run as a user who could not open it).
func OpenTap(name string) (*os.File, error) {
	fd, err := attachTap(name)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// SetTapOwner makes uid and gid the owners of the persistent TAP name, so
// a VMM running as them (a jailed Firecracker) may open it by name.
func SetTapOwner(name string, uid, gid int) error {
	fd, err := attachTap(name)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("tap %s owner: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid); err != nil {
		return fmt.Errorf("tap %s group: %w", name, err)
	}
	return nil
}
