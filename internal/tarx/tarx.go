// Package tarx extracts tar streams from an untrusted peer into a
// directory without ever writing outside it. The guest agent uses it for
// file imports (workspace overlays, synced auth files).
//
// Confinement rests on os.Root: every file operation is resolved inside
// the target directory by the kernel-facing openat walk, so neither ".."
// nor a symlink planted by an earlier entry (or already present) can lead
// a write out. Names are also checked up front, so an escaping entry is
// reported by name instead of as an obscure syscall error.
package tarx

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
)

// ErrUnsafePath means an entry tried to leave the target directory.
var ErrUnsafePath = errors.New("tar entry escapes the target directory")

// ErrTooLarge means the stream carried more file data than allowed.
var ErrTooLarge = errors.New("tar stream exceeds the size limit")

// ErrTooManyEntries means the stream carried more entries than allowed.
var ErrTooManyEntries = errors.New("tar stream exceeds the entry limit")

// DefaultMaxEntries bounds the entries of one stream: an empty file, a
// directory or a link has no data but costs an inode, so millions of them
// would exhaust the target filesystem's inodes under any byte cap. A
// full distribution rootfs holds well under 200,000.
const DefaultMaxEntries = 2_000_000

// headerCost is what each entry counts against the byte cap: the size
// of a tar header block.
const headerCost = 512

// Options tunes an extraction.
type Options struct {
	// MaxBytes (> 0) caps the file data written plus headerCost per
	// entry: a sparse entry can claim terabytes in a few bytes of stream.
	MaxBytes int64
	// MaxEntries caps the number of entries; 0 means DefaultMaxEntries,
	// < 0 no cap.
	MaxEntries int
	// Rootfs extracts an operating system tree (see ExtractRootfs).
	Rootfs bool
}

// ErrUnsupported means an entry type banger does not extract (devices,
// FIFOs): nothing in a repository or an auth file needs them.
var ErrUnsupported = errors.New("unsupported tar entry type")

// Stats counts what an extraction wrote.
type Stats struct {
	Files    int   `json:"files"`
	Dirs     int   `json:"dirs"`
	Symlinks int   `json:"symlinks"`
	Bytes    int64 `json:"bytes"`
	// Skipped counts device nodes and FIFOs ExtractRootfs left out.
	Skipped int `json:"skipped,omitempty"`
}

// CleanName validates an entry name and returns it in the form os.Root
// expects (relative, slash-separated, no "." or ".." components). It is
// the pure half of the path check and is fuzzed.
func CleanName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: %q is absolute", ErrUnsafePath, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q has a .. component", ErrUnsafePath, name)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return ".", nil
	}
	return clean, nil
}

// Extract writes the tar stream r into dir, which must exist. Existing
// files are replaced; directories are merged. Permission bits are kept
// (setuid, setgid and sticky bits are dropped); ownership is not.
// maxBytes (> 0) caps the file data written plus 512 bytes per entry
// (see Options); the entries are capped at DefaultMaxEntries.
func Extract(ctx context.Context, r io.Reader, dir string, maxBytes int64) (Stats, error) {
	return ExtractWith(ctx, r, dir, Options{MaxBytes: maxBytes})
}

// ExtractRootfs is Extract for an operating system tree (an image's root
// filesystem from a distribution tarball): ownership, setuid/setgid/sticky
// bits and hard links are kept, device nodes and FIFOs are skipped (the
// guest's devtmpfs provides them). The same confinement applies.
func ExtractRootfs(ctx context.Context, r io.Reader, dir string, maxBytes int64) (Stats, error) {
	return ExtractWith(ctx, r, dir, Options{MaxBytes: maxBytes, Rootfs: true})
}

// ExtractWith is Extract (or ExtractRootfs, with opts.Rootfs) with every
// limit spelled out.
func ExtractWith(ctx context.Context, r io.Reader, dir string, opts Options) (Stats, error) {
	maxBytes, rootfs := opts.MaxBytes, opts.Rootfs
	maxEntries := opts.MaxEntries
	if maxEntries == 0 {
		maxEntries = DefaultMaxEntries
	}
	// used is what counts against maxBytes: file data and headers.
	// st.Bytes stays the file data alone.
	entries, used := 0, int64(0)
	var st Stats
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, fmt.Errorf("open target %s: %w", dir, err)
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("read tar: %w", err)
		}
		if entries++; maxEntries > 0 && entries > maxEntries {
			return st, fmt.Errorf("%w: more than %d entries (at %q)", ErrTooManyEntries, maxEntries, hdr.Name)
		}
		if maxBytes > 0 {
			if used+headerCost > maxBytes {
				return st, fmt.Errorf("%w: more than %d bytes counting %d bytes per entry, at %q (entry %d)", ErrTooLarge, maxBytes, headerCost, hdr.Name, entries)
			}
			used += headerCost
		}
		name, err := CleanName(hdr.Name)
		if err != nil {
			return st, err
		}
		perm := fs.FileMode(hdr.Mode) & fs.ModePerm
		if rootfs {
			perm = hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		}
		// owner applies a rootfs entry's ownership, then its mode again:
		// chown clears setuid bits.
		owner := func(name string, chmod bool) error {
			if !rootfs {
				return nil
			}
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return fmt.Errorf("chown %s: %w", name, err)
			}
			if chmod {
				return root.Chmod(name, perm)
			}
			return nil
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if name != "." {
				if err := root.MkdirAll(name, 0o755); err != nil {
					return st, fmt.Errorf("create dir %s: %w", name, err)
				}
			}
			dirPerm := perm | 0o700
			if rootfs {
				dirPerm = perm
			}
			if err := root.Chmod(name, dirPerm); err != nil {
				return st, fmt.Errorf("chmod %s: %w", name, err)
			}
			if err := owner(name, true); err != nil {
				return st, err
			}
			st.Dirs++
		case tar.TypeReg:
			if err := prepareParent(root, name); err != nil {
				return st, err
			}
			var src io.Reader = tr
			if maxBytes > 0 {
				if hdr.Size > maxBytes-used {
					return st, fmt.Errorf("%w: %q is %d bytes, %d left", ErrTooLarge, hdr.Name, hdr.Size, maxBytes-used)
				}
				src = io.LimitReader(tr, maxBytes-used)
			}
			n, err := writeFile(root, name, src, perm)
			if err != nil {
				return st, err
			}
			if err := owner(name, true); err != nil {
				return st, err
			}
			st.Files++
			st.Bytes += n
			used += n
		case tar.TypeSymlink:
			if err := prepareParent(root, name); err != nil {
				return st, err
			}
			// The link target is stored verbatim: it may point anywhere,
			// but os.Root never follows it out of dir on a later write.
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return st, fmt.Errorf("create symlink %s: %w", name, err)
			}
			if err := owner(name, false); err != nil {
				return st, err
			}
			st.Symlinks++
		case tar.TypeLink:
			if !rootfs {
				return st, fmt.Errorf("%w: %q has type %q", ErrUnsupported, hdr.Name, string(hdr.Typeflag))
			}
			// Both ends are resolved inside dir: a hard link cannot reach
			// a file outside it.
			target, err := CleanName(hdr.Linkname)
			if err != nil {
				return st, err
			}
			if err := prepareParent(root, name); err != nil {
				return st, err
			}
			if err := root.Link(target, name); err != nil {
				return st, fmt.Errorf("hard link %s: %w", name, mapEscape(err, name))
			}
			st.Files++
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if !rootfs {
				return st, fmt.Errorf("%w: %q has type %q", ErrUnsupported, hdr.Name, string(hdr.Typeflag))
			}
			st.Skipped++
		default:
			return st, fmt.Errorf("%w: %q has type %q", ErrUnsupported, hdr.Name, string(hdr.Typeflag))
		}
	}
}

// prepareParent makes the parent directories of name and removes whatever
// non-directory sits at name, so a file can replace a symlink (and the
// other way round) without writing through it.
func prepareParent(root *os.Root, name string) error {
	if parent := path.Dir(name); parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("create dir %s: %w", parent, mapEscape(err, name))
		}
	}
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("inspect %s: %w", name, mapEscape(err, name))
	case fi.IsDir():
		return fmt.Errorf("replace %s: a directory is in the way", name)
	}
	return root.Remove(name)
}

func writeFile(root *os.Root, name string, r io.Reader, perm fs.FileMode) (int64, error) {
	// O_EXCL after prepareParent removed any old entry: a symlink raced in
	// between is refused rather than followed.
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm.Perm())
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", name, mapEscape(err, name))
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("write %s: %w", name, err)
	}
	// The umask may have narrowed perm at create time.
	return n, root.Chmod(name, perm)
}

// mapEscape turns os.Root's escape error into ErrUnsafePath.
func mapEscape(err error, name string) error {
	if err != nil && strings.Contains(err.Error(), "path escapes from parent") {
		return fmt.Errorf("%w: %q (through a symlink)", ErrUnsafePath, name)
	}
	return err
}
