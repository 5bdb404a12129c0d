package firecracker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

var _ vmm.Snapshotter = (*Driver)(nil)

// Files of a snapshot directory (vmm.Snapshotter.Save's dst). The
// daemon keeps its own files (disk layers) next to them, hence the
// prefix.
const (
	FileSnapMeta  = "fc-snapshot.json"
	FileSnapState = "fc-vmstate"
	FileSnapMem   = "fc-memory"
)

// fileRestoreMem is an unjailed restored VM's private copy of the
// snapshot's memory (vmm.Restore.Share false), in its VM directory.
const fileRestoreMem = "fc-restore.mem"

// In-jail names of snapshot files. Save writes under other names than a
// restore maps: a VM restored from /restore.mem and saved again must
// never have Firecracker truncate the file that backs its own memory
// (and, when shared, every sibling's).
const (
	jailSaveState    = "/save.vmstate"
	jailSaveMem      = "/save.mem"
	jailRestoreState = "/restore.vmstate"
	jailRestoreMem   = "/restore.mem"
)

// Versions that added the load-time overrides (CHANGELOG.md): before
// them, a restored VM reopens the TAP and the vsock socket it was saved
// with, and a field Firecracker does not know is refused.
var (
	versionNetworkOverrides = [3]int{1, 12, 0}
	versionVsockOverride    = [3]int{1, 16, 0}
)

const (
	// metaFormat is the version of snapshotMeta's layout.
	metaFormat = 1
	// maxMetaBytes caps the metadata read: it is a few hundred bytes.
	maxMetaBytes = 64 << 10
	// maxStateBytes caps the device state file that CheckSnapshot
	// hashes; Firecracker's is tens of KiB.
	maxStateBytes = 64 << 20
	// saveTimeout bounds pause + snapshot create: writing the guest
	// memory of a large VM to disk.
	saveTimeout = 10 * time.Minute
	// loadWait bounds a snapshot load (memory is mapped, not read).
	loadWait = 2 * time.Minute
)

// snapshotMeta is what Save records next to Firecracker's files: what
// the snapshot was taken from and what CheckSnapshot verifies.
type snapshotMeta struct {
	Format int `json:"format"`
	// Version is the Firecracker that wrote the snapshot ("1.16.1").
	Version   string `json:"firecracker_version"`
	MemoryMiB int    `json:"mem_size_mib"`
	VCPUs     int    `json:"vcpu_count"`
	Jailed    bool   `json:"jailed"`
	// Drives, Network and VsockUDS are the paths and names as
	// Firecracker opened them (GET /vm/config): a load reopens exactly
	// these.
	Drives   []Drive            `json:"drives"`
	Network  []NetworkInterface `json:"network_interfaces,omitempty"`
	VsockUDS string             `json:"vsock_uds_path,omitempty"`
	State    fileSum            `json:"state"`
	Memory   fileSum            `json:"memory"`
}

// fileSum pins a file's size (and, for the small state file, content).
type fileSum struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
}

// Save implements vmm.Snapshotter: pause, /snapshot/create into dst (or
// into the jail, then moved to dst), end the VMM, write the metadata.
func (d *Driver) Save(ctx context.Context, dir string, p vmm.Process, dst string) (vmm.Saved, error) {
	st, err := DecodeState(dir, p.State)
	if err != nil {
		return vmm.Saved{}, fmt.Errorf("save snapshot: %w", err)
	}
	if !d.Alive(p) {
		return vmm.Saved{}, errors.New("save snapshot: firecracker is not running")
	}
	sctx, cancel := context.WithTimeout(ctx, saveTimeout)
	meta, err := saveVMM(sctx, NewClient(st.APISocket), st, dst)
	cancel()
	// The VMM ends whatever happened: after a snapshot the guest must
	// not run on (its disks become layers), after a failure its state is
	// unknown.
	kerr := d.Stop(context.WithoutCancel(ctx), dir, p, true, 0)
	if err != nil {
		return vmm.Saved{}, fmt.Errorf("save snapshot: %w", errors.Join(err, kerr))
	}
	if kerr != nil {
		return vmm.Saved{}, fmt.Errorf("save snapshot: %w", kerr)
	}
	saved, err := finishSave(ctx, st, dst, meta)
	if err != nil {
		return vmm.Saved{}, fmt.Errorf("save snapshot: %w", err)
	}
	return saved, nil
}

// saveVMM is Save's part that talks to Firecracker.
func saveVMM(ctx context.Context, c *Client, st State, dst string) (snapshotMeta, error) {
	info, err := c.Describe(ctx)
	if err != nil {
		return snapshotMeta{}, err
	}
	cfg, err := c.VMConfig(ctx)
	if err != nil {
		return snapshotMeta{}, err
	}
	if cfg.MachineConfig == nil {
		return snapshotMeta{}, errors.New("firecracker reported no machine config")
	}
	if err := restorable(cfg.Drives, st.Jail != nil); err != nil {
		return snapshotMeta{}, err
	}
	meta := snapshotMeta{
		Format:    metaFormat,
		Version:   strings.TrimPrefix(info.VMMVersion, "v"),
		MemoryMiB: cfg.MachineConfig.MemSizeMiB,
		VCPUs:     cfg.MachineConfig.VCPUCount,
		Jailed:    st.Jail != nil,
		Drives:    cfg.Drives,
		Network:   cfg.NetworkInterfaces,
	}
	if cfg.Vsock != nil {
		meta.VsockUDS = cfg.Vsock.UDSPath
	}
	req := SnapshotCreate{SnapshotType: SnapshotFull, SnapshotPath: filepath.Join(dst, FileSnapState), MemFilePath: filepath.Join(dst, FileSnapMem)}
	if st.Jail != nil {
		// Firecracker can only write inside its jail.
		req.SnapshotPath, req.MemFilePath = jailSaveState, jailSaveMem
		for _, n := range []string{jailSaveState, jailSaveMem} {
			_ = os.Remove(st.Jail.HostPath(n))
		}
	}
	if err := c.Pause(ctx); err != nil {
		return snapshotMeta{}, err
	}
	if err := c.CreateSnapshot(ctx, req); err != nil {
		return snapshotMeta{}, err
	}
	return meta, nil
}

// restorable refuses to snapshot a VM whose drives Firecracker opened
// at paths that are not banger's fixed names (a VM booted by an older
// banger, with absolute paths in its own directory): the snapshot could
// never be restored anywhere else, since a load reopens exactly those.
func restorable(drives []Drive, jailed bool) error {
	for i, dr := range drives {
		if dr.PathOnHost != drivePath(i, jailed) {
			return fmt.Errorf("drive %s was opened at %q, not at banger's relocatable name %q (the VM was booted by an older banger): restart the VM, then take the snapshot", dr.DriveID, dr.PathOnHost, drivePath(i, jailed))
		}
	}
	return nil
}

// finishSave brings the files out of the jail, makes them the daemon's
// (0600), and writes the metadata last, so a directory with metadata is
// a complete snapshot.
func finishSave(ctx context.Context, st State, dst string, meta snapshotMeta) (vmm.Saved, error) {
	statePath, memPath := filepath.Join(dst, FileSnapState), filepath.Join(dst, FileSnapMem)
	if st.Jail != nil {
		for src, to := range map[string]string{st.Jail.HostPath(jailSaveState): statePath, st.Jail.HostPath(jailSaveMem): memPath} {
			if err := moveFile(ctx, src, to); err != nil {
				return vmm.Saved{}, err
			}
		}
	}
	var saved vmm.Saved
	for _, f := range []string{statePath, memPath} {
		// Written by the jail's user: the daemon's own from here on.
		if err := takeOwnership(f); err != nil {
			return vmm.Saved{}, err
		}
	}
	var err error
	if meta.State, err = sumFile(statePath, true); err != nil {
		return vmm.Saved{}, err
	}
	if meta.Memory, err = sumFile(memPath, false); err != nil {
		return vmm.Saved{}, err
	}
	if meta.State.Size == 0 || meta.Memory.Size == 0 {
		return vmm.Saved{}, errors.New("firecracker wrote an empty snapshot file")
	}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return vmm.Saved{}, err
	}
	tmp := filepath.Join(dst, FileSnapMeta+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return vmm.Saved{}, err
	}
	if err := os.Rename(tmp, filepath.Join(dst, FileSnapMeta)); err != nil {
		return vmm.Saved{}, err
	}
	for _, f := range []string{statePath, memPath, filepath.Join(dst, FileSnapMeta)} {
		saved.Bytes += allocated(f)
	}
	saved.MemoryBytes = min(allocated(memPath), meta.Memory.Size)
	return saved, nil
}

// moveFile renames src to dst, or copies it when the jail is on another
// filesystem. The jail root is the jail user's, so src may be a link a
// compromised Firecracker left to a host file: rename moves the link
// itself (takeOwnership then refuses it), and the copy reads only a
// regular file with no other name.
func moveFile(ctx context.Context, src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EXDEV) {
		return fmt.Errorf("move %s out of the jail: %w", filepath.Base(src), err)
	}
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("move %s out of the jail: %w", filepath.Base(src), err)
	}
	defer in.Close()
	if err := singleRegular(in); err != nil {
		return fmt.Errorf("move %s out of the jail: %w", filepath.Base(src), err)
	}
	if _, err := system.CloneFileFrom(ctx, in, dst); err != nil {
		return fmt.Errorf("move %s out of the jail: %w", filepath.Base(src), err)
	}
	return os.Remove(src)
}

// takeOwnership makes a snapshot file the daemon's, mode 0600, through
// a descriptor of the file itself: a symlink or a hard link to a host
// file (planted in the jail) is refused, never chowned or chmodded.
func takeOwnership(path string) error {
	// O_NONBLOCK: a FIFO in its place must not hang the daemon.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	if err := singleRegular(f); err != nil {
		return err
	}
	if err := f.Chown(os.Getuid(), os.Getgid()); err != nil {
		return err
	}
	return f.Chmod(0o600)
}

// singleRegular refuses anything but a regular file with one name.
func singleRegular(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok || st.Nlink != 1 {
		return fmt.Errorf("%s is not a regular file of its own (a link?)", filepath.Base(f.Name()))
	}
	return nil
}

// allocated is the space a file takes on disk (0 when it cannot tell).
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// sumFile records a file's size and, with hash, its SHA-256.
func sumFile(path string, hash bool) (fileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileSum{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileSum{}, err
	}
	if !fi.Mode().IsRegular() {
		return fileSum{}, fmt.Errorf("%s is not a regular file", filepath.Base(path))
	}
	s := fileSum{Size: fi.Size()}
	if hash {
		if s.Size > maxStateBytes {
			return fileSum{}, fmt.Errorf("%s is %d bytes, more than a device state file can be", filepath.Base(path), s.Size)
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.LimitReader(f, maxStateBytes)); err != nil {
			return fileSum{}, err
		}
		s.SHA256 = hex.EncodeToString(h.Sum(nil))
	}
	return s, nil
}

// CheckSnapshot implements vmm.Snapshotter: the metadata parses, and
// both of Firecracker's files are there with the size (and, for the
// device state, the content) Save recorded.
func (d *Driver) CheckSnapshot(dir string) error {
	_, err := readSnapshot(dir)
	return err
}

// readSnapshot is CheckSnapshot returning the metadata.
func readSnapshot(dir string) (snapshotMeta, error) {
	meta, err := readMeta(dir)
	if err != nil {
		return meta, fmt.Errorf("firecracker snapshot %s: %w (take a new snapshot)", dir, err)
	}
	for _, c := range []struct {
		name string
		want fileSum
	}{{FileSnapState, meta.State}, {FileSnapMem, meta.Memory}} {
		got, err := sumFile(filepath.Join(dir, c.name), c.want.SHA256 != "")
		if err != nil {
			return meta, fmt.Errorf("firecracker snapshot %s: %w (take a new snapshot)", dir, err)
		}
		if got != c.want {
			return meta, fmt.Errorf("firecracker snapshot %s: %s is truncated or changed (%d bytes, saved as %d) (take a new snapshot)", dir, c.name, got.Size, c.want.Size)
		}
	}
	return meta, nil
}

func readMeta(dir string) (snapshotMeta, error) {
	var meta snapshotMeta
	f, err := os.Open(filepath.Join(dir, FileSnapMeta))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return meta, errors.New("no Firecracker snapshot metadata (not a snapshot of this VMM, or its save did not finish)")
		}
		return meta, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetaBytes+1))
	if err != nil {
		return meta, err
	}
	if len(data) > maxMetaBytes {
		return meta, fmt.Errorf("%s is larger than %d bytes", FileSnapMeta, maxMetaBytes)
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return meta, fmt.Errorf("parse %s: %w", FileSnapMeta, err)
	}
	switch {
	case meta.Format != metaFormat:
		return meta, fmt.Errorf("%s has format %d, this banger reads %d", FileSnapMeta, meta.Format, metaFormat)
	case meta.MemoryMiB < 1 || meta.VCPUs < 1 || meta.VCPUs > MaxVCPUs:
		return meta, fmt.Errorf("%s: impossible machine (%d MiB, %d vCPUs)", FileSnapMeta, meta.MemoryMiB, meta.VCPUs)
	case meta.State.Size < 1 || meta.State.SHA256 == "" || meta.Memory.Size < 1:
		return meta, fmt.Errorf("%s records empty snapshot files", FileSnapMeta)
	case len(meta.Drives) == 0:
		return meta, fmt.Errorf("%s records no drives", FileSnapMeta)
	}
	return meta, nil
}

// SnapshotCompat implements vmm.Snapshotter. Firecracker restores on the
// software and hardware a snapshot was taken on (snapshot-support.md,
// "Where can I resume my snapshots?"); banger sets no CPU template, so
// the guest saw the host's CPU as it is. accel is always kvm here.
func (d *Driver) SnapshotCompat(ctx context.Context, accel string) (string, error) {
	v, err := d.fcVersion(ctx)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "", fmt.Errorf("read cpu model: %w", err)
	}
	return fmt.Sprintf("firecracker %d.%d.%d; cpu %s", v[0], v[1], v[2], cpuModel(string(data))), nil
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel(cpuinfo string) string {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "unknown"
}

// OverlayDisk implements vmm.Snapshotter. Firecracker boots raw files
// only, so the VM's disk is a copy of the layer (a reflink where the
// filesystem can, else a sparse copy). A layer that reads through a
// backing chain of its own cannot be copied as one raw file here.
func (d *Driver) OverlayDisk(ctx context.Context, r system.Runner, layer vmm.Disk, path string) (vmm.Disk, error) {
	if layer.Format != "raw" {
		return vmm.Disk{}, fmt.Errorf("firecracker boots raw disks only; layer %s is %s (use --vmm qemu)", layer.Path, layer.Format)
	}
	if len(layer.Backing) > 0 {
		return vmm.Disk{}, fmt.Errorf("firecracker boots raw disks only; layer %s stands on a backing chain of %d (%s): flatten it into one raw file, or use --vmm qemu", layer.Path, len(layer.Backing), layer.Backing[0].Path)
	}
	if err := system.CloneFile(ctx, layer.Path, path); err != nil {
		return vmm.Disk{}, fmt.Errorf("overlay disk: %w", err)
	}
	// The layer is read-only; its copy is the VM's to write.
	if err := os.Chmod(path, 0o600); err != nil {
		os.Remove(path)
		return vmm.Disk{}, fmt.Errorf("overlay disk: %w", err)
	}
	return vmm.Disk{Path: path, Format: "raw"}, nil
}
