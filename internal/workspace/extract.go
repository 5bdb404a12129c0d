package workspace

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
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
	links := map[string]bool{}
	tr := tar.NewReader(r)
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
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
			fst, n, err := writeNew(parent, path.Base(name), tr, perm, buf)
			if err != nil {
				return nil, st, fmt.Errorf("write %s: %w", name, err)
			}
			stats[name] = fst
			st.Files++
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
				stats[name] = statOf(sys)
			}
			st.Symlinks++
		}
	}
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
	n, err := io.CopyBuffer(f, r, buf)
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
