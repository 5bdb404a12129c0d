package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
)

// consolePoll is how often a followed console log looks for more.
const consolePoll = 250 * time.Millisecond

// ConsoleLog reads a VM's console log: the older generation kept by
// rotation (console.go), then the current one. With follow it keeps
// polling the current file, following it across rotations, until ctx
// ends or the VM stops.
func (d *Daemon) ConsoleLog(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(vm.Dir, paths.FileConsoleLog)
	f, err := os.Open(path)
	if err != nil {
		return nil, api.Errorf(api.CodeNotFound, "the VM has not booted yet", "no console log for %q", vm.Name)
	}
	cr := &consoleReader{ctx: ctx, f: f, path: path, follow: follow, alive: func(ctx context.Context) bool {
		cur, err := d.store.GetVM(ctx, vm.ID)
		return err == nil && d.driverFor(cur).Alive(d.proc(cur))
	}}
	if old, err := os.Open(path + system.RotatedSuffix); err == nil {
		cr.old = old
	}
	return cr, nil
}

// consoleReader is one read of a console log (see ConsoleLog).
type consoleReader struct {
	ctx context.Context
	// old is the rotated generation, read first; nil once done.
	old    *os.File
	f      *os.File
	path   string
	off    int64
	follow bool
	alive  func(ctx context.Context) bool
}

func (c *consoleReader) Read(p []byte) (int, error) {
	if c.old != nil {
		n, err := c.old.Read(p)
		if n > 0 {
			return n, nil
		}
		c.old.Close()
		c.old = nil
		if err != nil && err != io.EOF {
			return 0, err
		}
	}
	for {
		n, err := c.f.Read(p)
		if n > 0 {
			c.off += int64(n)
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, err
		}
		if !c.follow {
			return 0, io.EOF
		}
		// Rotated (renamed away, a new file in its place) or trimmed
		// (copy-truncate): carry on from the start of the current file.
		if cur, err := os.Stat(c.path); err == nil {
			if st, err := c.f.Stat(); err == nil && !os.SameFile(cur, st) {
				if nf, err := os.Open(c.path); err == nil {
					c.f.Close()
					c.f, c.off = nf, 0
					continue
				}
			} else if cur.Size() < c.off {
				if _, err := c.f.Seek(0, io.SeekStart); err == nil {
					c.off = 0
					continue
				}
			}
		}
		if !c.alive(c.ctx) {
			return 0, io.EOF
		}
		select {
		case <-c.ctx.Done():
			return 0, c.ctx.Err()
		case <-time.After(consolePoll):
		}
	}
}

func (c *consoleReader) Close() error {
	if c.old != nil {
		c.old.Close()
	}
	return c.f.Close()
}
