package agent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair returns both ends as pollable files. A stream socket whose
// peer closed reports POLLHUP, like a virtio-serial port without a host.
func socketPair(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestWaitHost(t *testing.T) {
	a, b := socketPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := waitHost(ctx, a); err != nil {
		t.Fatalf("peer connected: %v", err)
	}
	b.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 3*hostPollInterval)
	defer cancel()
	if err := waitHost(ctx, a); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("peer gone: %v, want to keep waiting until the deadline", err)
	}
}

func TestVirtioPortOpenError(t *testing.T) {
	_, err := VirtioPort("/nonexistent/banger.agent")(context.Background())
	if err == nil || !strings.Contains(err.Error(), "open agent port") {
		t.Fatalf("got %v", err)
	}
}
