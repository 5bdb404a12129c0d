package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// dirWorkStaging is where a work disk's tree is assembled (the image's
// work seed plus the seed mark) before mkfs.ext4 -d copies it in.
const dirWorkStaging = "work-staging"

// imageSeedFingerprint is the fingerprint of img's work seed now.
func imageSeedFingerprint(img store.Image) (string, error) {
	return image.WorkSeedFingerprint(filepath.Join(img.Dir, image.DirWorkSeed))
}

// makeWorkDisk creates the VM's /root from the image's work seed, without
// a loop mount, and marks the disk with the seed's fingerprint
// (/root/.banger/work-seed). It returns that fingerprint.
//
// The seed came from a guest or an image author, so it is read only
// through an os.Root (a seed that is itself a link is refused), copied
// into a fresh staging directory of banger's own with its links kept as
// links, and the mark is written there without following any link the
// seed put at .banger. mkfs.ext4 -d reads that staging copy, and it
// stores links as links (lstat), never following one.
func (d *Daemon) makeWorkDisk(ctx context.Context, img store.Image, dir string, size int64) (string, error) {
	seedDir := filepath.Join(img.Dir, image.DirWorkSeed)
	fp, err := image.WorkSeedFingerprint(seedDir)
	if err != nil {
		return "", fmt.Errorf("work seed of image %s: %w", img.Name, err)
	}
	staging := filepath.Join(dir, dirWorkStaging)
	defer os.RemoveAll(staging)
	if err := os.RemoveAll(staging); err != nil {
		return "", fmt.Errorf("clean work staging: %w", err)
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return "", fmt.Errorf("create work staging: %w", err)
	}
	dst, err := os.OpenRoot(staging)
	if err != nil {
		return "", fmt.Errorf("create work staging: %w", err)
	}
	defer dst.Close()
	src, err := image.OpenTree(seedDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return "", fmt.Errorf("work seed of image %s: %w", img.Name, err)
	default:
		err := image.CopyInto(src, dst)
		src.Close()
		if err != nil {
			return "", fmt.Errorf("copy work seed: %w", err)
		}
	}
	if err := image.MarkWorkSeed(dst, fp); err != nil {
		return "", err
	}
	// /root itself must stay private whatever mode the seed's root had.
	if err := dst.Chmod(".", 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, paths.FileWorkDisk)
	if err := system.CreateSparse(p, size); err != nil {
		return "", fmt.Errorf("create work disk: %w", err)
	}
	if _, err := d.runner.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", image.LabelWork,
		"-E", "root_owner=0:0", "-d", staging, p); err != nil {
		return "", fmt.Errorf("format work disk: %w", err)
	}
	return fp, nil
}

// growWorkDisk makes a stopped VM's work disk size bytes: the file grows
// sparsely and resize2fs grows the filesystem, offline. Shrinking is
// refused; an equal size is a no-op.
func (d *Daemon) growWorkDisk(ctx context.Context, vm *store.VM, size int64) error {
	p := filepath.Join(vm.Dir, paths.FileWorkDisk)
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("work disk of %s: %w", vm.Name, err)
	}
	cur := st.Size()
	switch {
	case size == cur:
		return nil
	case size < cur:
		return api.Errorf(api.CodeInvalid,
			fmt.Sprintf("pass --disk %d or more; to get a smaller disk, create a new VM and move your work with `banger vm workspace`", gib(cur)),
			"the work disk of %s is %d GiB; shrinking it to %d GiB is not supported", vm.Name, gib(cur), gib(size))
	}
	if err := os.Truncate(p, size); err != nil {
		return fmt.Errorf("grow work disk: %w", err)
	}
	// resize2fs wants a freshly checked filesystem. e2fsck exits 1 when it
	// fixed something (a journal replay after a kill): that is fine.
	//
	// TODO(security): the guest wrote this filesystem, so e2fsck and
	// resize2fs parse hostile input as the daemon's user (root in a
	// system install); a parser bug in e2fsprogs would be a way out of
	// the VM. The VMM cannot swap the file for a link (it gets the disk
	// as an fd and has no write access to the VM directory), but the
	// contents are the guest's. Run both as the VM's own VMM uid (it
	// owns work.ext4 already), or grow the filesystem from inside the
	// guest (resize2fs online) at next boot instead.
	if _, err := d.runner.Run(ctx, "e2fsck", "-f", "-y", p); err != nil {
		var ce *system.CmdError
		if !errors.As(err, &ce) || ce.ExitCode != 1 {
			return fmt.Errorf("check work disk before resize: %w", err)
		}
	}
	if _, err := d.runner.Run(ctx, "resize2fs", p); err != nil {
		return fmt.Errorf("grow work disk filesystem: %w", err)
	}
	d.log.Info("work disk grown", "vm", vm.Name, "from_gib", gib(cur), "to_gib", gib(size))
	vm.WorkDiskBytes = size
	return nil
}

func gib(b int64) int64 { return b >> 30 }
