package daemon

// Free-space checks before large writes. Each operation estimates what it
// will really write, not the virtual size of its sparse disks: a 4 GiB
// work disk made from a 10 MiB seed costs about 10 MiB. The estimates are
// deliberately rough and lean high; limits.min_free_mib is added on top,
// so the host keeps some room whatever the estimate missed.

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

const (
	// diskMetaMargin covers what a new VM writes besides its work seed:
	// ext4 metadata of the work disk (lazy init keeps it small), the seed
	// disk with banger-agent, the qcow2 overlay's header, logs.
	diskMetaMargin = 64 << 20
	// provisionMargin is what a provisioning script may add to the root
	// disk of a derived image; a script that installs more needs more.
	provisionMargin = 1 << 30
	// Debian builds: the mmdebstrap tree (~430 MB base; the agents and
	// Node add ~700 MB), the ext4 image made from it, npm's downloads.
	buildBaseNeed   = 2 << 30
	buildAgentsNeed = 4 << 30
)

// allocatedBytes is what path really occupies on disk (sparse files count
// their data blocks only); 0 when it is missing.
func allocatedBytes(path string) uint64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Blocks) * 512
	}
	return uint64(st.Size())
}

// treeBytes is the allocated size of every regular file under dir.
func treeBytes(dir string) uint64 {
	var n uint64
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			n += allocatedBytes(p)
		}
		return nil
	})
	return n
}

// estimateCreate is what creating a VM of img under drv writes: the work
// seed twice (the staging copy, then inside the work disk) plus a margin,
// and for a root disk that is a copy, not an overlay (Firecracker), the
// data blocks of the rootfs (a reflink may make it free, which cannot be
// known beforehand).
func estimateCreate(img store.Image, drv vmm.Driver) uint64 {
	need := 2*treeBytes(filepath.Join(img.Dir, image.DirWorkSeed)) + diskMetaMargin
	if len(drv.RootDisk(bootImage(img), "").Backing) == 0 {
		need += allocatedBytes(filepath.Join(img.Dir, image.FileRootfs))
	}
	return need
}

// checkCreateSpace refuses a create the VMs directory cannot hold. The
// work disk's size is not counted: it is sparse, and growing into it
// later is the guest's business (and bounded by it).
func (d *Daemon) checkCreateSpace(img store.Image, vmmName string) error {
	return d.checkFree("create VM", d.layout.VMsDir, estimateCreate(img, d.driverFor(store.VM{VMM: vmmName})))
}

// checkDeriveSpace: a derive boots base with a qcow2 overlay and a work
// disk, receives /root back as the new seed, and flattens the overlay
// into a raw rootfs (sparse: base's data blocks plus what provisioning
// added).
func (d *Daemon) checkDeriveSpace(base store.Image) error {
	seed := treeBytes(filepath.Join(base.Dir, image.DirWorkSeed))
	need := allocatedBytes(filepath.Join(base.Dir, image.FileRootfs)) + 3*seed + provisionMargin + diskMetaMargin
	return d.checkFree("image build --from", d.dataDir(), need)
}

// checkBuildSpace: a Debian build of the agents image or the base image.
func (d *Daemon) checkBuildSpace(base bool) error {
	need := uint64(buildAgentsNeed)
	if base {
		need = buildBaseNeed
	}
	return d.checkFree("image build", d.dataDir(), need)
}

// checkVoidSpace: the tarball is unpacked into a tree, then made into an
// ext4 image; both exist at the peak.
func (d *Daemon) checkVoidSpace(spec image.VoidSpec) error {
	need := 3*allocatedBytes(spec.RootfsTar) + treeBytes(spec.Modules) + allocatedBytes(spec.Kernel) + allocatedBytes(spec.Initrd) + diskMetaMargin
	return d.checkFree("image build --distro void", d.dataDir(), need)
}

// checkImportSpace: an import copies the image directory (reflinks where
// the filesystem can, which cannot be known beforehand).
func (d *Daemon) checkImportSpace(src string) error {
	var need uint64
	for _, f := range []string{image.FileRootfs, image.FileKernel, image.FileInitrd, image.FileVmlinux} {
		need += allocatedBytes(filepath.Join(src, f))
	}
	need += treeBytes(filepath.Join(src, image.DirWorkSeed))
	return d.checkFree("image import", d.layout.ImagesDir, need)
}

// dataDir is where builds write (images/ and cache/ live under it).
func (d *Daemon) dataDir() string {
	if d.layout.DataDir != "" {
		return d.layout.DataDir
	}
	return d.layout.ImagesDir
}
