package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/bangerdev/banger/internal/system"
)

// Trees that came from an image or a guest (a rootfs, a work seed, /root
// of a provisioning VM) are touched only through os.Root: every path is
// resolved inside the tree, so a link the tree holds can never lead
// banger to a host file. Links themselves are kept as links, never
// followed.

// ErrNotDir means a tree's top is not a real directory (a link, a file).
var ErrNotDir = errors.New("not a directory")

// OpenTree opens dir as an os.Root. dir itself must be a real directory:
// a link there would make the whole tree some other directory of the
// host. A missing dir is reported as fs.ErrNotExist.
func OpenTree(dir string) (*os.Root, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is %s, not a directory: refusing to use it", ErrInvalid, dir, describeMode(fi.Mode()))
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	// dir may have been swapped for a link between the two calls.
	if st, err := r.Stat("."); err != nil || !os.SameFile(fi, st) {
		r.Close()
		return nil, fmt.Errorf("%w: %s changed while it was opened", ErrInvalid, dir)
	}
	return r, nil
}

// OpenSubtree opens rel inside root as an os.Root, refusing a link or a
// file at rel the way OpenTree does.
func OpenSubtree(root *os.Root, rel string) (*os.Root, error) {
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, treeErr(err, rel)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is %s, not a directory: refusing to use it", ErrInvalid, rel, describeMode(fi.Mode()))
	}
	return root.OpenRoot(rel)
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsRegular():
		return "a file"
	}
	return "a special file"
}

// treeErr turns os.Root's escape error into one that says what happened.
func treeErr(err error, rel string) error {
	if err != nil && strings.Contains(err.Error(), "path escapes from parent") {
		return fmt.Errorf("%w: %s goes through a link that leaves the tree: refusing to follow it", ErrInvalid, rel)
	}
	return err
}

// CopyTree copies the directory tree src to dst, which must not exist:
// modes and symlinks are kept, device nodes, FIFOs and sockets are left
// out. src must be a real directory (see OpenTree).
func CopyTree(src, dst string) error {
	s, err := OpenTree(src)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	d, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer d.Close()
	return CopyInto(s, d)
}

// CopyInto copies every entry of src into dst, both confined trees,
// merging with what dst holds: a non-directory in the way is replaced,
// never written through. Directory modes are applied last so a
// read-only directory can still be filled.
func CopyInto(src, dst *os.Root) error {
	var dirs []string
	modes := map[string]fs.FileMode{}
	err := fs.WalkDir(src.FS(), ".", func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return treeErr(err, p)
		}
		fi, err := src.Lstat(p)
		if err != nil {
			return treeErr(err, p)
		}
		switch {
		case fi.IsDir():
			if p != "." {
				if err := mkdirReplacing(dst, p); err != nil {
					return err
				}
			}
			dirs = append(dirs, p)
			modes[p] = fi.Mode().Perm()
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := src.Readlink(p)
			if err != nil {
				return treeErr(err, p)
			}
			if err := clearEntry(dst, p); err != nil {
				return err
			}
			if err := dst.Symlink(target, p); err != nil {
				return treeErr(err, p)
			}
		case fi.Mode().IsRegular():
			if err := copyRegular(src, dst, p, fi.Mode().Perm()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := dst.Chmod(dirs[i], modes[dirs[i]]); err != nil {
			return treeErr(err, dirs[i])
		}
	}
	return nil
}

// openRegular opens rel in root for reading and checks it is a regular
// file. O_NONBLOCK keeps a FIFO swapped in from blocking the open.
func openRegular(root *os.Root, rel string) (*os.File, error) {
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, treeErr(err, rel)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is %s, not a regular file", ErrInvalid, rel, describeMode(fi.Mode()))
	}
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, treeErr(err, rel)
	}
	if st, err := f.Stat(); err != nil || !os.SameFile(fi, st) {
		f.Close()
		return nil, fmt.Errorf("%w: %s changed while it was opened", ErrInvalid, rel)
	}
	return f, nil
}

// maxTreeFile bounds a file of an image-controlled tree read into
// memory (os-release, sshd_config, package databases): the image decides
// its size.
const maxTreeFile = 64 << 20

// readTreeFile reads the regular file rel of a confined tree.
func readTreeFile(root *os.Root, rel string) ([]byte, error) {
	f, err := openRegular(root, rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxTreeFile {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d banger reads from an image: refusing it", ErrInvalid, rel, fi.Size(), maxTreeFile)
	}
	// The file may still grow after the check.
	b, err := io.ReadAll(io.LimitReader(f, maxTreeFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rel, err)
	}
	if len(b) > maxTreeFile {
		return nil, fmt.Errorf("%w: %s is more than the %d bytes banger reads from an image: refusing it", ErrInvalid, rel, maxTreeFile)
	}
	return b, nil
}

// copyRegular copies a file keeping its holes: a seed file claiming a
// huge size in a few blocks (image import, every vm create) must not be
// written out in full.
func copyRegular(src, dst *os.Root, rel string, perm fs.FileMode) error {
	in, err := openRegular(src, rel)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := clearEntry(dst, rel); err != nil {
		return err
	}
	// O_EXCL after clearEntry: a link raced in is refused, not followed.
	f, err := dst.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return treeErr(err, rel)
	}
	// CopyInto has no context of its own; the copy is bounded by the
	// source's data blocks.
	err = system.SparseCopy(context.Background(), in, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	// The umask may have narrowed perm at create time.
	return treeErr(dst.Chmod(rel, perm), rel)
}

// writeTreeFile replaces rel in a confined tree with a new regular file.
func writeTreeFile(root *os.Root, rel string, data []byte, perm fs.FileMode) error {
	return writeTreeFileFrom(root, rel, strings.NewReader(string(data)), perm)
}

func writeTreeFileFrom(root *os.Root, rel string, r io.Reader, perm fs.FileMode) error {
	if err := clearEntry(root, rel); err != nil {
		return err
	}
	// O_EXCL after clearEntry: a link raced in is refused, not followed.
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return treeErr(err, rel)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	// The umask may have narrowed perm at create time.
	return treeErr(root.Chmod(rel, perm), rel)
}

// clearEntry makes room for a new entry at rel: its parents are created
// (inside the tree) and whatever non-directory sits at rel is removed
// without being followed. A directory in the way is an error.
func clearEntry(root *os.Root, rel string) error {
	if dir := path.Dir(rel); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return treeErr(err, rel)
		}
	}
	fi, err := root.Lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return treeErr(err, rel)
	case fi.IsDir():
		return fmt.Errorf("replace %s: a directory is in the way", rel)
	}
	return treeErr(root.Remove(rel), rel)
}

// mkdirReplacing makes rel a real directory: a link or file there is
// removed first, an existing directory is kept.
func mkdirReplacing(root *os.Root, rel string) error {
	fi, err := root.Lstat(rel)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		if err := root.Remove(rel); err != nil {
			return treeErr(err, rel)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return treeErr(err, rel)
	}
	if dir := path.Dir(rel); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return treeErr(err, rel)
		}
	}
	return treeErr(root.Mkdir(rel, 0o755), rel)
}

// symlinkTree makes rel a link to target in a confined tree, replacing
// whatever non-directory was there.
func symlinkTree(root *os.Root, target, rel string) error {
	if err := clearEntry(root, rel); err != nil {
		return err
	}
	return treeErr(root.Symlink(target, rel), rel)
}

// removeTree removes rel (not followed) if it exists.
func removeTree(root *os.Root, rel string) error {
	err := root.Remove(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return treeErr(err, rel)
}

// readTreeDir lists the names in directory rel of a confined tree,
// sorted; a missing directory lists nothing. A link at rel is not
// followed: what it names is not this tree's directory.
func readTreeDir(root *os.Root, rel string) ([]string, error) {
	fi, err := root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, treeErr(err, rel)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is %s, not a directory", ErrInvalid, rel, describeMode(fi.Mode()))
	}
	f, err := root.Open(rel)
	if err != nil {
		return nil, treeErr(err, rel)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// FileWorkSeedMark is written on every work disk (relative to /root): the
// fingerprint of the work seed the disk was made from.
const FileWorkSeedMark = ".banger/work-seed"

// MarkWorkSeed writes the seed fingerprint mark into a work disk's
// staging tree. The seed may have put a link at .banger or at the mark
// itself: both are replaced, never written through.
func MarkWorkSeed(root *os.Root, fp string) error {
	dir := path.Dir(FileWorkSeedMark)
	if err := mkdirReplacing(root, dir); err != nil {
		return fmt.Errorf("mark work disk: %w", err)
	}
	// The seed chose .banger's mode; banger must be able to write there.
	if err := root.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("mark work disk: %w", err)
	}
	if fi, err := root.Lstat(FileWorkSeedMark); err == nil && fi.IsDir() {
		if err := root.RemoveAll(FileWorkSeedMark); err != nil {
			return fmt.Errorf("mark work disk: %w", err)
		}
	}
	if err := writeTreeFile(root, FileWorkSeedMark, []byte(fp+"\n"), 0o644); err != nil {
		return fmt.Errorf("mark work disk: %w", err)
	}
	return nil
}

// CopyImageDir copies the image directory src (banger's own, or one a
// user passes to `image import`) to dst, reflinking where it can. Every
// file is opened through an os.Root on src and must be a regular file,
// the work seed a real directory (see CheckDir): a link planted in an
// exported image never makes banger copy a host file.
func CopyImageDir(ctx context.Context, src, dst string) error {
	if err := CheckDir(src); err != nil {
		return err
	}
	root, err := OpenTree(src)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, f := range []string{FileRootfs, FileKernel, FileInitrd, FileVmlinux, FileManifest, FileMeta} {
		in, err := openRegular(root, f)
		if errors.Is(err, fs.ErrNotExist) && (f == FileVmlinux || f == FileInitrd) {
			continue
		}
		if err != nil {
			return fmt.Errorf("copy %s: %w", f, err)
		}
		_, err = system.CloneFileFrom(ctx, in, filepath.Join(dst, f))
		in.Close()
		if err != nil {
			return fmt.Errorf("copy %s: %w", f, err)
		}
	}
	seed, err := OpenSubtree(root, DirWorkSeed)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer seed.Close()
	if err := os.Mkdir(filepath.Join(dst, DirWorkSeed), 0o700); err != nil {
		return err
	}
	out, err := os.OpenRoot(filepath.Join(dst, DirWorkSeed))
	if err != nil {
		return err
	}
	defer out.Close()
	return CopyInto(seed, out)
}
