package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/bangerdev/banger/internal/tarx"
)

// extractTree writes the overlay tar into dir, which ApplyPlan created
// empty, and returns the stat data of every file and symlink it made
// (for the index). Every entry passes checkEntry first. Writes go through
// os.Root handles, one per directory and kept open, so a file costs one
// openat rather than a walk from the top: under TCG each system call is
// expensive and a workspace has tens of thousands of files.
func extractTree(ctx context.Context, r io.Reader, dir string, allowGit bool) (map[string]fileStat, tarx.Stats, error) {
	var st tarx.Stats
	stats := map[string]fileStat{}
	top, err := os.OpenRoot(dir)
	if err != nil {
		return nil, st, fmt.Errorf("open %s: %w", dir, err)
	}
	x := &extractor{top: top, dirs: map[string]*os.Root{".": top}}
	defer x.close()
	w := newWriters(stats)
	defer w.wait()
	links := map[string]bool{}
	tr := tar.NewReader(r)
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		if err := w.failed(); err != nil {
			return nil, st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if err := w.wait(); err != nil {
				return nil, st, err
			}
			return stats, st, nil
		}
		if err != nil {
			return nil, st, fmt.Errorf("read tar: %w", err)
		}
		name, err := checkEntry(hdr.Name, hdr.Typeflag, links, allowGit)
		if err != nil {
			return nil, st, err
		}
		if name == "." {
			continue
		}
		perm := fs.FileMode(hdr.Mode) & fs.ModePerm
		switch hdr.Typeflag {
		case tar.TypeDir:
			if _, err := x.dir(name); err != nil {
				return nil, st, err
			}
			if perm != 0o755 {
				if err := top.Chmod(name, perm|0o700); err != nil {
					return nil, st, fmt.Errorf("chmod %s: %w", name, err)
				}
			}
			st.Dirs++
		case tar.TypeReg:
			parent, err := x.dir(path.Dir(name))
			if err != nil {
				return nil, st, err
			}
			st.Files++
			if hdr.Size <= smallFile {
				// Small files are written by the pool, so file
				// creation runs on every vCPU while this loop keeps
				// reading the stream.
				data := make([]byte, hdr.Size)
				if _, err := io.ReadFull(tr, data); err != nil {
					return nil, st, fmt.Errorf("read %s: %w", name, err)
				}
				st.Bytes += hdr.Size
				w.submit(writeJob{parent: parent, name: name, data: data, perm: perm})
				continue
			}
			fst, n, err := writeNew(parent, path.Base(name), tr, perm, buf)
			if err != nil {
				return nil, st, fmt.Errorf("write %s: %w", name, err)
			}
			w.record(name, fst)
			st.Bytes += n
		case tar.TypeSymlink:
			parent, err := x.dir(path.Dir(name))
			if err != nil {
				return nil, st, err
			}
			base := path.Base(name)
			if err := parent.Symlink(hdr.Linkname, base); err != nil {
				return nil, st, fmt.Errorf("create symlink %s: %w", name, err)
			}
			fi, err := parent.Lstat(base)
			if err != nil {
				return nil, st, fmt.Errorf("inspect %s: %w", name, err)
			}
			if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
				w.record(name, statOf(sys))
			}
			st.Symlinks++
		}
	}
}

// smallFile is the size up to which a file is buffered and handed to the
// writer pool; bigger files stream straight from the tar.
const smallFile = 256 << 10

type writeJob struct {
	parent *os.Root
	name   string
	data   []byte
	perm   fs.FileMode
}

// writers is a small pool creating files. Under TCG creating a file costs
// about a millisecond of guest kernel time, and a workspace has tens of
// thousands: spreading that over the vCPUs is most of the speed-up.
type writers struct {
	jobs chan writeJob
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
	// stats is shared with extractTree, written under mu.
	stats map[string]fileStat
	once  sync.Once
}

func newWriters(stats map[string]fileStat) *writers {
	w := &writers{jobs: make(chan writeJob, 64), stats: stats}
	for range max(2, runtime.GOMAXPROCS(0)) {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for j := range w.jobs {
				if w.failed() != nil {
					continue
				}
				fst, _, err := writeNew(j.parent, path.Base(j.name), bytes.NewReader(j.data), j.perm, nil)
				if err != nil {
					w.fail(fmt.Errorf("write %s: %w", j.name, err))
					continue
				}
				w.record(j.name, fst)
			}
		}()
	}
	return w
}

func (w *writers) submit(j writeJob) { w.jobs <- j }

func (w *writers) record(name string, st fileStat) {
	w.mu.Lock()
	w.stats[name] = st
	w.mu.Unlock()
}

func (w *writers) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *writers) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// wait finishes the pending writes and returns the first error.
func (w *writers) wait() error {
	w.once.Do(func() { close(w.jobs) })
	w.wg.Wait()
	return w.failed()
}

type extractor struct {
	top  *os.Root
	dirs map[string]*os.Root
}

// dir returns a handle on directory name, creating it (and its parents)
// the first time.
func (x *extractor) dir(name string) (*os.Root, error) {
	if d, ok := x.dirs[name]; ok {
		return d, nil
	}
	if err := x.top.MkdirAll(name, 0o755); err != nil {
		return nil, fmt.Errorf("create dir %s: %w", name, mapEscape(err, name))
	}
	d, err := x.top.OpenRoot(name)
	if err != nil {
		return nil, fmt.Errorf("open dir %s: %w", name, mapEscape(err, name))
	}
	x.dirs[name] = d
	return d, nil
}

func (x *extractor) close() {
	for name, d := range x.dirs {
		if name != "." {
			d.Close()
		}
	}
	x.top.Close()
}

// writeNew creates name in parent (it must not exist: the tree is new)
// and returns its stat data after the last write.
func writeNew(parent *os.Root, name string, r io.Reader, perm fs.FileMode, buf []byte) (fileStat, int64, error) {
	f, err := parent.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fileStat{}, 0, mapEscape(err, name)
	}
	var n int64
	if buf == nil {
		n, err = io.Copy(f, r)
	} else {
		n, err = io.CopyBuffer(f, r, buf)
	}
	// The umask may have narrowed perm (only group/other write bits,
	// which git never sets but a full copy may carry).
	if err == nil && perm&0o022 != 0 {
		err = f.Chmod(perm)
	}
	var fst fileStat
	if err == nil {
		var fi fs.FileInfo
		if fi, err = f.Stat(); err == nil {
			if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
				fst = statOf(sys)
			}
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return fst, n, err
}

// mapEscape turns os.Root's escape error into tarx.ErrUnsafePath.
func mapEscape(err error, name string) error {
	if err != nil && strings.Contains(err.Error(), "path escapes from parent") {
		return fmt.Errorf("%w: %q (through a symlink)", tarx.ErrUnsafePath, name)
	}
	return err
}
