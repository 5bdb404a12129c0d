package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/system"
)

// An ext4 image given to `image register` is read without mounting it,
// with debugfs. debugfs resolves paths inside the filesystem, so reading
// a file through a link in the image never reaches the host. Dumping a
// tree onto the host is another matter: `rdump` creates each entry by
// path with plain open/mkdir/symlink/chmod/chown, so a crafted directory
// holding two entries of one name (a link, then a file) makes it write
// and chown through the link it has just made, and e2fsprogs before
// 1.47.1 also accepts names holding "/". ReadExt4Seed therefore lists
// the whole tree first and refuses anything a valid filesystem cannot
// hold, and dumps it into a fresh private directory only afterwards.

// maxSeedEntries bounds the listing of an image's /root.
const maxSeedEntries = 200_000

// maxSeedBytes bounds the apparent size of /root's files, each and in
// all: rdump writes every byte a file claims, holes included, so a file
// of a few blocks claiming a terabyte would fill the host's disk.
const maxSeedBytes = 4 << 30

// maxLsOutput bounds one `ls -p` listing read back from debugfs. A line
// is at most ~300 bytes (a 255-byte name), so every listing
// maxSeedEntries allows fits.
const maxLsOutput = 64 << 20

// DebugfsEntry is one line of `debugfs -R "ls -p DIR"`.
type DebugfsEntry struct {
	Inode uint64
	Mode  uint32 // st_mode bits as the filesystem stores them
	Name  string
	Size  uint64 // apparent size; 0 for directories, which list none
}

// IsDir reports whether the entry is a directory.
func (e DebugfsEntry) IsDir() bool { return e.Mode&0o170000 == 0o040000 }

// IsSymlink reports whether the entry is a symbolic link.
func (e DebugfsEntry) IsSymlink() bool { return e.Mode&0o170000 == 0o120000 }

// ParseDebugfsLs parses the parseable listing `ls -p` prints:
// "/inode/mode/uid/gid/name/size/" per line. Any line that is not exactly
// that (a name holding "/" or a newline breaks it) is an error, so a
// name debugfs would use differently from how it was listed is refused.
// Empty slots (inode 0) are skipped.
func ParseDebugfsLs(out []byte) ([]DebugfsEntry, error) {
	var entries []DebugfsEntry
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "/")
		if len(f) != 8 || f[0] != "" || f[7] != "" {
			return nil, fmt.Errorf("%w: unexpected debugfs listing line %q", ErrInvalid, line)
		}
		ino, err1 := strconv.ParseUint(f[1], 10, 32)
		mode, err2 := strconv.ParseUint(f[2], 8, 32)
		if err1 != nil || err2 != nil || f[5] == "" {
			return nil, fmt.Errorf("%w: unexpected debugfs listing line %q", ErrInvalid, line)
		}
		var size uint64
		if f[6] != "" {
			if size, err1 = strconv.ParseUint(f[6], 10, 64); err1 != nil {
				return nil, fmt.Errorf("%w: unexpected debugfs listing line %q", ErrInvalid, line)
			}
		}
		if ino == 0 {
			continue
		}
		entries = append(entries, DebugfsEntry{Inode: ino, Mode: uint32(mode), Name: f[5], Size: size})
	}
	return entries, nil
}

// checkDirListing checks one directory's entries as a valid filesystem
// has them: "." (this directory) and ".." once each and directories,
// every other name once.
func checkDirListing(where string, ino uint64, entries []DebugfsEntry) error {
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.Name] {
			return fmt.Errorf("%w: %s holds %q twice (a crafted filesystem): refusing it", ErrInvalid, where, e.Name)
		}
		seen[e.Name] = true
		if (e.Name == "." || e.Name == "..") && !e.IsDir() {
			return fmt.Errorf("%w: %s has a %q entry that is not a directory (a crafted filesystem): refusing it", ErrInvalid, where, e.Name)
		}
		if e.Name == "." && e.Inode != ino {
			return fmt.Errorf("%w: %s has a %q entry that is another directory (a crafted filesystem): refusing it", ErrInvalid, where, e.Name)
		}
	}
	if !seen["."] || !seen[".."] {
		return fmt.Errorf("%w: %s has no . or .. entry (not a directory, or a crafted filesystem)", ErrInvalid, where)
	}
	return nil
}

// ReadExt4Seed copies /root of the ext4 image rootfs to dst (which must
// not exist) as a work seed. It returns fs.ErrNotExist when the image has
// no /root, and an ErrInvalid error when /root is not a real directory
// or its tree is one no valid filesystem holds.
func ReadExt4Seed(ctx context.Context, r system.Runner, rootfs, dst string) error {
	ls := func(spec string) ([]DebugfsEntry, error) {
		out, err := r.RunIn(ctx, system.RunOpts{MaxStdout: maxLsOutput}, "debugfs", "-R", "ls -p "+spec, rootfs)
		if errors.Is(err, system.ErrOutputTooLarge) {
			return nil, fmt.Errorf("%w: the listing of %s in the rootfs is more than %d bytes: refusing it", ErrInvalid, spec, maxLsOutput)
		}
		if err != nil {
			return nil, fmt.Errorf("list %s in the rootfs: %w", spec, err)
		}
		return ParseDebugfsLs(out)
	}
	top, err := ls("/")
	if err != nil {
		return err
	}
	var rootIno uint64
	for _, e := range top {
		if e.Name != "root" {
			continue
		}
		if !e.IsDir() {
			kind := "not a directory"
			if e.IsSymlink() {
				kind = "a symlink"
			}
			return fmt.Errorf("%w: the rootfs's /root is %s: banger makes /root the work seed of every VM and needs a real directory there", ErrInvalid, kind)
		}
		rootIno = e.Inode
	}
	if rootIno == 0 {
		return fs.ErrNotExist
	}
	// Walk the whole tree: one debugfs per directory, each listing
	// checked; a directory reached twice (a loop, a hard-linked
	// directory) is refused too.
	type dir struct {
		ino  uint64
		path string
	}
	queue := []dir{{rootIno, "/root"}}
	visited := map[uint64]bool{rootIno: true}
	total := 0
	var totalBytes uint64
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		entries, err := ls(fmt.Sprintf("<%d>", d.ino))
		if err != nil {
			return err
		}
		if err := checkDirListing(d.path, d.ino, entries); err != nil {
			return err
		}
		if total += len(entries); total > maxSeedEntries {
			return fmt.Errorf("%w: the rootfs's /root holds more than %d entries", ErrInvalid, maxSeedEntries)
		}
		for _, e := range entries {
			// rdump writes every byte a file claims, holes included.
			if !e.IsDir() {
				if e.Size > maxSeedBytes {
					return fmt.Errorf("%w: the rootfs's %s/%s claims %d bytes, more than the %d a work seed may hold: shrink or remove it", ErrInvalid, d.path, e.Name, e.Size, uint64(maxSeedBytes))
				}
				if totalBytes += e.Size; totalBytes > maxSeedBytes {
					return fmt.Errorf("%w: the rootfs's /root claims more than %d bytes in all (at %s/%s), more than a work seed may hold: shrink it", ErrInvalid, uint64(maxSeedBytes), d.path, e.Name)
				}
			}
			if !e.IsDir() || e.Name == "." || e.Name == ".." {
				continue
			}
			if visited[e.Inode] {
				return fmt.Errorf("%w: %s/%s is a directory seen before (a crafted filesystem): refusing it", ErrInvalid, d.path, e.Name)
			}
			visited[e.Inode] = true
			queue = append(queue, dir{e.Inode, d.path + "/" + e.Name})
		}
	}

	// The listing holds nothing rdump could misuse: dump into a private
	// directory of our own, then move the result in place.
	tmp := dst + ".rdump"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if strings.ContainsAny(tmp, " \t\"\\") {
		return fmt.Errorf("dump /root: the image directory %s has characters debugfs cannot take", tmp)
	}
	if _, err := r.Run(ctx, "debugfs", "-R", "rdump /root "+tmp, rootfs); err != nil {
		return fmt.Errorf("dump /root from the rootfs: %w", err)
	}
	got := filepath.Join(tmp, "root")
	if fi, err := os.Lstat(got); err != nil || !fi.IsDir() {
		return fmt.Errorf("dump /root from the rootfs: no directory came out (%v)", err)
	}
	if err := os.Rename(got, dst); err != nil {
		return err
	}
	return nil
}
