package daemon

// Console logs, bounded by the host. A guest can print forever, so a
// VM's console log is capped at limits.console_log_mib per generation:
// console.log holds the newest output, console.log.1 the generation
// before, and nothing older is kept.
//
//   - QEMU writes the serial console to a listening Unix socket
//     (console.sock, server=on,wait=off). The daemon connects and copies
//     it into a RotatingWriter. While no daemon is connected QEMU drops
//     the output: bounded, and neither the guest nor QEMU blocks. A
//     restarted daemon reconnects from reconcile. Kernel messages printed
//     before the daemon connects at boot are not lost in practice: the
//     kernel replays its log buffer when the serial console registers,
//     long after the daemon connected.
//   - Firecracker's serial console is its stdout, a file opened with
//     O_APPEND; the daemon copy-truncates it every few seconds. While no
//     daemon runs this file grows (Firecracker offers no bounded sink);
//     the next daemon trims it at once.

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// consoleTrimInterval is how often a console log its VMM appends to
// itself (vmm.ConsoleFile: Firecracker) is trimmed.
const consoleTrimInterval = 2 * time.Second

// consoleSet is the console pumps running, by VM directory and VMM
// process (a retried boot has a new VMM while the old pump drains); an
// entry goes when its VMM does.
type consoleSet struct {
	mu    sync.Mutex
	byDir map[consoleKey]chan struct{}
}

type consoleKey struct {
	dir string
	pid int
}

func (d *Daemon) consoleMax() int64 {
	if n := d.cfg.Limits.ConsoleLogMiB; n > 0 {
		return int64(n) << 20
	}
	return 8 << 20
}

// resetConsole removes both generations before a boot: a console log
// shows the current boot only.
func resetConsole(dir string) {
	os.Remove(filepath.Join(dir, paths.FileConsoleLog))
	os.Remove(filepath.Join(dir, paths.FileConsoleLog+system.RotatedSuffix))
}

// keepConsole starts the console pump of vm's VMM unless one runs. The
// returned channel closes when the pump ends (its VMM exited, or ctx).
func (d *Daemon) keepConsole(ctx context.Context, vm store.VM) <-chan struct{} {
	key := consoleKey{vm.Dir, vm.PID}
	d.consoles.mu.Lock()
	defer d.consoles.mu.Unlock()
	if done, ok := d.consoles.byDir[key]; ok {
		return done
	}
	if d.consoles.byDir == nil {
		d.consoles.byDir = map[consoleKey]chan struct{}{}
	}
	done := make(chan struct{})
	d.consoles.byDir[key] = done
	go func() {
		defer func() {
			d.consoles.mu.Lock()
			delete(d.consoles.byDir, key)
			d.consoles.mu.Unlock()
			close(done)
		}()
		if d.driverFor(vm).Info().Console == vmm.ConsoleFile {
			d.trimConsole(ctx, vm)
			return
		}
		// The VMM's own log (stderr) gets what a guest can make it
		// say again and again (QEMU 7.2 reports every failed balloon
		// discard of a shared snapshot's memory): kept under the cap
		// too.
		go d.trimLog(ctx, vm, filepath.Join(vm.Dir, paths.FileQEMULog))
		d.pumpConsole(ctx, vm.Dir)
	}()
	return done
}

// trimLog keeps a log its VMM appends to under the console cap while
// the VMM lives.
func (d *Daemon) trimLog(ctx context.Context, vm store.VM, path string) {
	drv := d.driverFor(vm)
	for {
		if err := system.CopyTruncate(path, d.consoleMax()); err != nil && !os.IsNotExist(err) {
			d.log.Debug("trim log", "vm", vm.Name, "log", filepath.Base(path), "err", err)
		}
		if vm.PID == 0 || !drv.Alive(d.proc(vm)) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(consoleTrimInterval):
		}
	}
}

// pumpConsole copies QEMU's console socket into the rotating log until
// QEMU closes it. A VM started by an older banger has no socket (its
// QEMU writes console.log itself, without O_APPEND, so it cannot be
// trimmed safely); it is left as it is.
func (d *Daemon) pumpConsole(ctx context.Context, dir string) {
	sock := filepath.Join(dir, paths.FileConsoleSocket)
	if _, err := os.Stat(sock); err != nil {
		return
	}
	var c net.Conn
	var err error
	// The socket may lag QEMU's start by a moment; a dead QEMU refuses.
	for i := 0; i < 20; i++ {
		var dl net.Dialer
		if c, err = dl.DialContext(ctx, "unix", sock); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		d.log.Debug("console socket", "dir", dir, "err", err)
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	w := &system.RotatingWriter{Path: filepath.Join(dir, paths.FileConsoleLog), Max: d.consoleMax()}
	defer w.Close()
	if _, err := io.Copy(w, c); err != nil && ctx.Err() == nil {
		d.log.Debug("console pump ended", "dir", dir, "err", err)
	}
}

// trimConsole keeps a Firecracker console log under the cap while its
// VMM lives.
func (d *Daemon) trimConsole(ctx context.Context, vm store.VM) {
	d.trimLog(ctx, vm, filepath.Join(vm.Dir, paths.FileConsoleLog))
}

// consoleSettled waits a moment for the pump of dir to drain what a VMM
// that just died printed last (the panic a boot error should show).
func (d *Daemon) consoleSettled(dir string, wait time.Duration) {
	var pending []chan struct{}
	d.consoles.mu.Lock()
	for k, done := range d.consoles.byDir {
		if k.dir == dir {
			pending = append(pending, done)
		}
	}
	d.consoles.mu.Unlock()
	deadline := time.After(wait)
	for _, done := range pending {
		select {
		case <-done:
		case <-deadline:
			return
		}
	}
}

// baseCtx is the daemon's lifetime (background in unit tests).
func (d *Daemon) baseCtx() context.Context {
	if d.ops != nil {
		return d.ops.base
	}
	return context.Background()
}
