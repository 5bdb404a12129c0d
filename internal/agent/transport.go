package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// DefaultPort is the virtio-serial port QEMU exposes for the agent.
const DefaultPort = "/dev/virtio-ports/banger.agent"

// hostPollInterval paces the wait for a host: POLLHUP is level-triggered
// and returns at once, so poll() alone cannot sleep until a host connects.
const hostPollInterval = 100 * time.Millisecond

// VirtioPort is the Transport for a virtio-serial port. The port has one
// host peer at a time (QEMU's chardev socket takes one client): while no
// host is connected poll() reports POLLHUP and read() returns 0, which
// ends the session. Each call opens the port afresh (it can be open only
// once at a time, and Serve closes it when a session ends) and returns
// once a host is there.
func VirtioPort(path string) Transport {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		// os.OpenFile registers the fd with the runtime poller, so Close
		// from another goroutine wakes a blocked Read.
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open agent port: %w", err)
		}
		if err := waitHost(ctx, f); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
}

// waitHost returns once f has a connected peer (no POLLHUP), or when ctx
// ends.
func waitHost(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("agent port: %w", err)
	}
	for {
		var revents int16
		var perr error
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				_, perr = unix.Poll(fds, 0)
				if perr != unix.EINTR {
					break
				}
			}
			revents = fds[0].Revents
		}); err != nil {
			return fmt.Errorf("agent port: %w", err)
		}
		if perr != nil {
			return fmt.Errorf("poll agent port: %w", perr)
		}
		if revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("poll agent port: error condition (revents %#x)", revents)
		}
		if revents&unix.POLLHUP == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(hostPollInterval):
		}
	}
}

// ListenVsock listens on the guest's AF_VSOCK port (Firecracker's vsock
// device). It binds to VMADDR_CID_ANY rather than the local CID, which
// is unknown (and asking fails) until the virtio vsock transport module
// has loaded; a socket bound to any CID takes connections from a
// transport that arrives later.
func ListenVsock(port uint32) (net.Listener, error) {
	ln, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, port, nil)
	if err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	return ln, nil
}
