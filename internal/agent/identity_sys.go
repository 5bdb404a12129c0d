package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// serviceTimeout bounds one service-manager or ss command: under TCG an
// sshd restart takes a second or two.
const serviceTimeout = 30 * time.Second

// resetFilter keeps loopback connections: both their ends are in this
// guest and survived the restore together (a session's local servers).
const resetFilter = "( ! dst 127.0.0.0/8 and ! dst [::1] )"

// defaultIdentitySys acts on the running guest.
func defaultIdentitySys() identitySys {
	return identitySys{
		root:             "/",
		setHostname:      func(name string) error { return unix.Sethostname([]byte(name)) },
		setClock:         setClock,
		addEntropy:       addEntropy,
		restartSSH:       func(ctx context.Context) error { return restartSSH(ctx, "/") },
		resetConnections: resetConnections,
	}
}

func setClock(unixNano int64) error {
	ts := unix.NsecToTimespec(unixNano)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return nil
}

// randPoolInfo renders struct rand_pool_info for RNDADDENTROPY: entropy
// credited in bits, the buffer's size in bytes, then the bytes.
func randPoolInfo(b []byte) []byte {
	out := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(out[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(out[4:], uint32(len(b)))
	copy(out[8:], b)
	return out
}

// addEntropy adds b to the kernel's input pool with RNDADDENTROPY, which
// also credits it (so the pool counts as freshly seeded). Should the
// ioctl be refused, a plain write to /dev/urandom still mixes b in,
// uncredited.
func addEntropy(b []byte) (credited bool, why error, err error) {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return false, nil, fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer f.Close()
	info := randPoolInfo(b)
	rc, err := f.SyscallConn()
	if err != nil {
		return false, nil, fmt.Errorf("/dev/urandom: %w", err)
	}
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	}); err != nil {
		return false, nil, fmt.Errorf("/dev/urandom: %w", err)
	}
	if errno == 0 {
		return true, nil, nil
	}
	why = fmt.Errorf("RNDADDENTROPY: %w", errno)
	if _, err := f.Write(b); err != nil {
		return false, nil, fmt.Errorf("%w; write /dev/urandom: %w", why, err)
	}
	return false, why, nil
}

// sshRestartCommand is how this guest's service manager restarts sshd:
// systemd on the Debian images (ssh.service is Type=notify, so restart
// returns once the new sshd listens; KillMode=process keeps running
// sessions), runit on Void (sv restart waits for the service to be up).
func sshRestartCommand(root string) ([]string, error) {
	if st, err := os.Stat(filepath.Join(root, "run/systemd/system")); err == nil && st.IsDir() {
		return []string{"systemctl", "restart", "ssh.service"}, nil
	}
	if _, err := os.Stat(filepath.Join(root, "etc/sv/sshd")); err == nil {
		return []string{"sv", "restart", "sshd"}, nil
	}
	return nil, errors.New("neither systemd nor a runit sshd service found")
}

func restartSSH(ctx context.Context, root string) error {
	argv, err := sshRestartCommand(root)
	if err != nil {
		return err
	}
	_, err = runGuestCommand(ctx, argv...)
	return err
}

// resetConnections destroys the established TCP sockets whose peer is
// not this guest (SOCK_DESTROY through `ss -K`; the Debian cloud kernel
// has INET_DIAG_DESTROY). The agent's own channel is virtio-serial or
// vsock, never TCP, so it is not touched.
func resetConnections(ctx context.Context) (int, string, error) {
	ss, err := system.LookPathIn("ss", baseEnv["PATH"], "/")
	if err != nil {
		return 0, "this guest has no ss (iproute2)", nil
	}
	out, err := runGuestCommand(ctx, ss, "-K", "-t", "-n", "-H", "state", "established", resetFilter)
	if err != nil {
		return 0, "", err
	}
	return countLines(out), "", nil
}

// countLines counts the non-empty lines of ss's listing: one per socket
// it destroyed.
func countLines(out []byte) int {
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// runGuestCommand runs argv with the agent's base environment and a
// deadline; the error carries argv and stderr.
func runGuestCommand(ctx context.Context, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(commandEnv(api.ExecRequest{}), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
