package vmm

import (
	"context"

	"github.com/bangerdev/banger/internal/system"
)

// Snapshotter is the optional capability of saving a running VM's
// memory and device state to files and starting a new VMM from them
// (Spec.Restore). A driver without it makes `vm snapshot`, `vm fork`
// and `vm park` fail with ErrNotSupported.
//
// A snapshot is taken in one way only: Save pauses the guest, writes
// its state into a directory and ends the VMM. The VM's disks are then
// exactly the saved instant, so the daemon can turn them into read-only
// layers; a VM that goes on running is restored from its own snapshot.
// This keeps every VMM-specific step (live block-job tricks, QMP or
// Firecracker API calls) inside the driver, and the disks' handling in
// one place in the daemon.
type Snapshotter interface {
	// SnapshotCompat identifies what a snapshot of a VM under accel can
	// only be restored by: the VMM's version, the CPU model, the
	// accelerator. A snapshot records it; a restore under another value
	// is refused before anything starts, naming both.
	SnapshotCompat(ctx context.Context, accel string) (string, error)
	// Save pauses the VM of p, writes its device state and memory into
	// dst (a directory that exists and is empty; file names are the
	// driver's) and ends the VMM. It returns once the VMM is gone. On
	// failure the VMM is ended too (its guest state is unknown) and dst
	// may hold partial files, which the caller removes.
	Save(ctx context.Context, dir string, p Process, dst string) (Saved, error)
	// OverlayDisk makes path a new writable disk whose content is layer
	// (a read-only snapshot layer and its own backing chain), in the
	// format this VMM boots, and returns it as a Disk with its chain.
	OverlayDisk(ctx context.Context, r system.Runner, layer Disk, path string) (Disk, error)
	// CheckSnapshot says whether dir holds a complete snapshot this
	// driver wrote (files present, sizes and headers sane), so a
	// truncated or foreign snapshot is refused with a clear error before
	// a VMM starts.
	CheckSnapshot(dir string) error
}

// Saved describes what Save wrote.
type Saved struct {
	// Bytes is the space the snapshot's files take on disk.
	Bytes int64
	// MemoryBytes is the guest memory the snapshot holds (touched
	// pages; the rest reads as zero).
	MemoryBytes int64
	// RAMInState says the memory went into the device-state stream (a
	// VM whose RAM was a private mapping of a shared snapshot): a
	// restore must then load all of it, and cannot share its pages. The
	// daemon converts such a save before it becomes a snapshot: a
	// restore with Paused, saved again at once.
	RAMInState bool
}

// Restore asks Start for a VM that continues from a snapshot instead of
// booting. Kernel, Initrd and Cmdline of the Spec are ignored; every
// other field must describe the same machine as at the save (CPUs,
// memory, devices), except the VM's own files, sockets and forwards.
type Restore struct {
	// Dir holds the files Save wrote.
	Dir string
	// Share maps the snapshot's memory copy-on-write, shared with every
	// other VM restored from the same snapshot (forks, ready images):
	// a page costs host memory once until a VM writes it. Without it the
	// VM gets a private copy (a parked VM waking), which it can itself
	// be snapshotted from fastest.
	Share bool
	// Paused leaves the guest paused after the load: the VMM is only
	// there to be saved again (converting a save whose RAM is in the
	// state stream into one with a memory file).
	Paused bool
}
