package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CloneMethod says how CloneFileMethod produced its copy.
type CloneMethod string

const (
	// CloneReflink: the destination shares extents with the source
	// (FICLONE on btrfs, XFS, bcachefs...), instant and free until written.
	CloneReflink CloneMethod = "reflink"
	// CloneSparseCopy: data was copied, skipping holes and zero blocks.
	CloneSparseCopy CloneMethod = "sparse-copy"
)

// CloneFile copies src to dst as cheaply as the filesystem allows; see
// CloneFileMethod.
func CloneFile(ctx context.Context, src, dst string) error {
	_, err := CloneFileMethod(ctx, src, dst)
	return err
}

// CloneFileMethod copies src to dst, creating or truncating dst with
// src's permission bits, and reports how. It tries a reflink first and
// falls back to a sparse copy, so a 4 GiB rootfs with 600 MiB of data
// costs 600 MiB at most. On failure dst is removed, so a half-written
// disk is never mistaken for a good one.
func CloneFileMethod(ctx context.Context, src, dst string) (method CloneMethod, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("clone file: %w", err)
	}
	defer in.Close()
	return CloneFileFrom(ctx, in, dst)
}

// CloneFileFrom is CloneFileMethod from a file already open, so a caller
// that opened it through an os.Root (a tree an image or a guest controls)
// copies exactly the file it checked.
func CloneFileFrom(ctx context.Context, in *os.File, dst string) (method CloneMethod, err error) {
	src := in.Name()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("clone file: %s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return "", fmt.Errorf("clone file: %w", err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("clone file: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()

	// Any FICLONE failure (EOPNOTSUPP, EXDEV across filesystems, EINVAL
	// on unaligned sizes, ENOTTY...) just means "copy instead".
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return CloneReflink, nil
	}
	if err := sparseCopy(ctx, in, out, fi.Size()); err != nil {
		return "", fmt.Errorf("clone file %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		return "", fmt.Errorf("clone file: sync: %w", err)
	}
	return CloneSparseCopy, nil
}

const (
	copyChunk = 1 << 20
	// ZeroBlock is the granularity at which all-zero data is skipped;
	// 4 KiB matches the block size of every filesystem we care about
	// and the guest's page size.
	ZeroBlock = 4 << 10
)

// SparseCopy copies the regular file in to out, which must be empty,
// leaving holes where in has holes or all-zero blocks. Trees an image
// or a guest controls are copied with it: a file claiming a terabyte in
// a few blocks must not cost a terabyte of host disk.
func SparseCopy(ctx context.Context, in, out *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("sparse copy: %s is not a regular file", in.Name())
	}
	if err := sparseCopy(ctx, in, out, fi.Size()); err != nil {
		return fmt.Errorf("sparse copy %s: %w", in.Name(), err)
	}
	return nil
}

// sparseCopy copies the data regions of in to out and leaves holes where
// in has holes or all-zero blocks. out must be empty.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	if err := WalkData(ctx, in, size, func(b []byte, off int64) error {
		_, err := WriteNonZero(out, b, off)
		return err
	}); err != nil {
		return err
	}
	// Trailing holes and skipped zero blocks leave the file short.
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

// WalkData calls fn with f's data below size, in order, a chunk of at
// most 1 MiB at a time: holes are skipped (SEEK_DATA), so a sparse file
// (guest memory, a disk) costs what it holds.
func WalkData(ctx context.Context, f *os.File, size int64, fn func(b []byte, off int64) error) error {
	buf := make([]byte, copyChunk)
	for off := int64(0); off < size; {
		start, end, err := nextData(f, off, size)
		if err != nil {
			return err
		}
		if start >= size {
			break
		}
		for pos := start; pos < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(len(buf)), end-pos))
			if _, err := f.ReadAt(buf[:n], pos); err != nil {
				return fmt.Errorf("read at %d: %w", pos, err)
			}
			if err := fn(buf[:n], pos); err != nil {
				return err
			}
			pos += int64(n)
		}
		off = end
	}
	return nil
}

// nextData returns the next data region at or after off. Filesystems
// without SEEK_DATA get the whole rest of the file as one region; zero
// blocks are still skipped by writeNonZero.
func nextData(f *os.File, off, size int64) (start, end int64, err error) {
	start, err = unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil // only a hole remains
	case err != nil:
		return off, size, nil
	}
	end, err = unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
	if err != nil {
		return start, size, nil
	}
	return start, min(end, size), nil
}

// WriteNonZero writes the non-zero 4 KiB blocks of b at offset off,
// runs of them coalesced into single writes, and returns the bytes
// written.
func WriteNonZero(out *os.File, b []byte, off int64) (int64, error) {
	var written int64
	runStart := -1
	flush := func(end int) error {
		if runStart < 0 {
			return nil
		}
		n, err := out.WriteAt(b[runStart:end], off+int64(runStart))
		written += int64(n)
		if err != nil {
			return fmt.Errorf("write at %d: %w", off+int64(runStart), err)
		}
		runStart = -1
		return nil
	}
	for i := 0; i < len(b); i += ZeroBlock {
		j := min(i+ZeroBlock, len(b))
		if IsZero(b[i:j]) {
			if err := flush(i); err != nil {
				return written, err
			}
		} else if runStart < 0 {
			runStart = i
		}
	}
	return written, flush(len(b))
}

// IsZero says whether b holds only zero bytes (compared a block at a
// time with the runtime's vectorised memequal: guest memory is scanned
// by the gigabyte).
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroes))
		if !bytes.Equal(b[:n], zeroes[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroes [ZeroBlock]byte

// CreateSparse creates path (mode 0600) or resizes it to size bytes
// without allocating blocks.
func CreateSparse(path string, size int64) error {
	if size < 0 {
		return fmt.Errorf("create sparse file %s: negative size %d", path, size)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("create sparse file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("create sparse file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create sparse file: %w", err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that readers, and a crash,
// see either the old content or the new, never a mix: it writes a temp
// file in the same directory, fsyncs it, renames it over path and fsyncs
// the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The rename is only durable once the directory entry is.
	if d, derr := os.Open(dir); derr == nil {
		derr = d.Sync()
		d.Close()
		if derr != nil {
			return fmt.Errorf("write %s: sync dir: %w", path, derr)
		}
	}
	return nil
}

// FreeBytes returns the bytes available to unprivileged users on the
// filesystem holding path.
func FreeBytes(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
