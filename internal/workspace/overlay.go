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
	"syscall"

	"github.com/bangerdev/banger/api"
)

// OverlayStats counts what an overlay or full copy tar holds.
type OverlayStats struct {
	Files    int   `json:"files"`
	Dirs     int   `json:"dirs,omitempty"`
	Symlinks int   `json:"symlinks"`
	Bytes    int64 `json:"bytes"`
	// Vanished are paths that disappeared between listing and reading;
	// they are left out rather than failing the whole prepare.
	Vanished []string `json:"vanished,omitempty"`
	// Skipped are paths left out on purpose, each with the reason, for
	// the CLI to show as warnings.
	Skipped []Skipped `json:"skipped,omitempty"`
}

// Skipped is one path an overlay left out.
type Skipped struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// WriteOverlay streams, as a tar, every file git lists in the working
// tree: tracked files that exist on disk and untracked files that are not
// ignored, read from disk now. Regular files are 0644 or 0755 (git keeps
// only the executable bit), symlinks are symlink entries with their target
// verbatim. Files are read through an os.Root on the working tree, so no
// symlink, planted or raced in, leads a read outside the repository; a
// path below a symlink is treated as missing, as git does.
func (w *Workspace) WriteOverlay(ctx context.Context, out io.Writer) (OverlayStats, error) {
	var st OverlayStats
	if w.Plan.Mode != ModeBundle {
		return st, fmt.Errorf("write overlay: workspace is in %s mode", w.Plan.Mode)
	}
	root, err := os.OpenRoot(w.Repo.Root)
	if err != nil {
		return st, fmt.Errorf("open %s: %w", w.Repo.Root, err)
	}
	defer root.Close()
	deleted := map[string]bool{}
	for _, p := range w.Plan.Deleted {
		deleted[p] = true
	}
	tw := tar.NewWriter(out)
	lst := newTreeStat(root)
	for _, e := range w.entries {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if e.nestedRepo {
			st.Skipped = append(st.Skipped, Skipped{e.path, "untracked nested git repository; commit it as a submodule or use --mode full_copy"})
			continue
		}
		fi, err := lst.lstat(e.path)
		switch {
		case isGone(err) || err == nil && fi.IsDir():
			if !deleted[e.path] && !e.skipWorktree {
				st.Vanished = append(st.Vanished, e.path)
			}
			continue
		case err != nil:
			return st, fmt.Errorf("inspect %s: %w", e.path, err)
		}
		if err := addEntry(tw, root, e.path, fi, true, &st); err != nil {
			return st, err
		}
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("write overlay: %w", err)
	}
	return st, nil
}

// WriteFullCopy streams the whole repository directory, .git and
// submodules included, as a tar: directories, regular files and symlinks
// with their permission bits. Sockets, FIFOs and devices (an fsmonitor
// socket in .git, say) are skipped.
func WriteFullCopy(ctx context.Context, repo Repo, out io.Writer) (OverlayStats, error) {
	var st OverlayStats
	if err := checkFullCopy(repo); err != nil {
		return st, err
	}
	root, err := os.OpenRoot(repo.Root)
	if err != nil {
		return st, fmt.Errorf("open %s: %w", repo.Root, err)
	}
	defer root.Close()
	tw := tar.NewWriter(out)
	// fs.WalkDir over the root's FS reports symlinks as symlinks and does
	// not descend into them.
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			if isGone(err) && name != "." {
				st.Vanished = append(st.Vanished, name)
				return nil
			}
			return fmt.Errorf("read %s: %w", name, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if name == "." {
			return nil
		}
		fi, err := root.Lstat(name)
		if isGone(err) {
			st.Vanished = append(st.Vanished, name)
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("inspect %s: %w", name, err)
		}
		if fi.IsDir() {
			st.Dirs++
			return writeHeader(tw, &tar.Header{Name: name + "/", Typeflag: tar.TypeDir,
				Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime(), Format: tar.FormatPAX})
		}
		return addEntry(tw, root, name, fi, false, &st)
	})
	if err != nil {
		return st, err
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("write full copy: %w", err)
	}
	return st, nil
}

// addEntry writes the file or symlink at name. gitModes narrows regular
// file modes to what git tracks (0644/0755).
func addEntry(tw *tar.Writer, root *os.Root, name string, fi fs.FileInfo, gitModes bool, st *OverlayStats) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := root.Readlink(name)
		if isGone(err) {
			st.Vanished = append(st.Vanished, name)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read symlink %s: %w", name, err)
		}
		st.Symlinks++
		return writeHeader(tw, &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target,
			Mode: 0o777, ModTime: fi.ModTime(), Format: tar.FormatPAX})
	case fi.Mode().IsRegular():
		return addFile(tw, root, name, fi, gitModes, st)
	default:
		st.Skipped = append(st.Skipped, Skipped{name, "not a regular file, directory or symlink"})
		return nil
	}
}

func addFile(tw *tar.Writer, root *os.Root, name string, fi fs.FileInfo, gitModes bool, st *OverlayStats) error {
	// O_NONBLOCK: should a FIFO have replaced the file since the lstat,
	// opening it must not hang. os.Root follows a symlink raced in at the
	// last component, but only within the repository, and the SameFile
	// check below then drops it.
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if isGone(err) {
		st.Vanished = append(st.Vanished, name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	defer f.Close()
	cur, err := f.Stat()
	if err != nil {
		return fmt.Errorf("inspect %s: %w", name, err)
	}
	if !cur.Mode().IsRegular() || !os.SameFile(fi, cur) {
		st.Vanished = append(st.Vanished, name)
		return nil
	}
	mode := int64(cur.Mode().Perm())
	if gitModes {
		mode = 0o644
		if cur.Mode()&0o100 != 0 {
			mode = 0o755
		}
	}
	size := cur.Size()
	if err := writeHeader(tw, &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: size,
		ModTime: cur.ModTime(), Format: tar.FormatPAX}); err != nil {
		return err
	}
	// The header promised size bytes: a file that grows is cut at the
	// size it had when opened, one that shrinks cannot be written.
	n, err := io.CopyN(tw, f, size)
	if errors.Is(err, io.EOF) {
		return api.Errorf(api.CodeConflict, "run the command again once nothing is writing to the file",
			"%s shrank while banger was copying it (%d of %d bytes)", name, n, size)
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", name, err)
	}
	st.Files++
	st.Bytes += size
	return nil
}

func writeHeader(tw *tar.Writer, hdr *tar.Header) error {
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write tar entry %q: %w", hdr.Name, err)
	}
	return nil
}

// isGone: the path does not exist (any more), or a component that should
// be a directory is not one.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// treeStat lstats repository paths the way git looks at a working tree:
// a path whose parent directory is a symlink, even one pointing inside
// the repository, does not exist ("beyond a symbolic link"). Results for
// parent directories are cached.
type treeStat struct {
	root *os.Root
	dirs map[string]error
}

func newTreeStat(root *os.Root) *treeStat {
	return &treeStat{root: root, dirs: map[string]error{}}
}

func (t *treeStat) lstat(name string) (fs.FileInfo, error) {
	if err := t.realDir(path.Dir(name)); err != nil {
		return nil, err
	}
	return t.root.Lstat(name)
}

// realDir reports whether dir and all its parents are directories, not
// symlinks.
func (t *treeStat) realDir(dir string) error {
	if dir == "." || dir == "" {
		return nil
	}
	if err, ok := t.dirs[dir]; ok {
		return err
	}
	err := t.realDir(path.Dir(dir))
	if err == nil {
		var fi fs.FileInfo
		fi, err = t.root.Lstat(dir)
		if err == nil && !fi.IsDir() {
			err = fmt.Errorf("%s: %w", dir, fs.ErrNotExist)
		}
	}
	t.dirs[dir] = err
	return err
}
