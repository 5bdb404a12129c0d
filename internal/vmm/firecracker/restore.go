package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// A restore (vmm.Spec.Restore) starts Firecracker with no boot
// configuration: the devices, their paths and the machine come from the
// snapshot. What a load can change is little (snapshot-support.md,
// "Loading snapshots"):
//   - drives are reopened at the path_on_host they were saved with.
//     banger gives Firecracker fixed names relative to its working
//     directory (unjailed) or in its jail, so those names are the
//     restored VM's own disks; a snapshot taken with other paths cannot
//     be restored (there is no drive override, and PATCH /drives only
//     runs after the load that already failed to open the old paths);
//   - the TAP is reopened by name unless network_overrides names the
//     restored VM's (Firecracker >= 1.12);
//   - the vsock socket is bound at its saved path unless vsock_override
//     gives another (>= 1.16); banger's relative or in-jail name is
//     already the restored VM's own, so the override is rarely needed;
//   - the guest's MAC, CPU count and memory size are the snapshot's.

// checkRestore verifies the snapshot and learns the Firecracker version
// before anything is started, so a load that would fail is refused with
// its reason.
func (d *Driver) checkRestore(ctx context.Context, s *starting) error {
	meta, err := readSnapshot(s.spec.Restore.Dir)
	if err != nil {
		return err
	}
	v, err := d.fcVersion(ctx)
	if err != nil {
		return err
	}
	s.meta, s.version = &meta, v
	return nil
}

// planLoad is the /snapshot/load body of restoring meta into the VM of
// spec under Firecracker version v, with p's device paths (jail set when
// jailed). It is pure, and refuses what the load could not do.
func planLoad(p plan, spec vmm.Spec, meta snapshotMeta, jail *JailPlan, v [3]int) (SnapshotLoad, error) {
	r := spec.Restore
	if meta.MemoryMiB != spec.MemoryMiB || meta.VCPUs != spec.CPUs {
		return SnapshotLoad{}, fmt.Errorf("snapshot is of a VM with %d MiB and %d vCPUs, this one has %d MiB and %d", meta.MemoryMiB, meta.VCPUs, spec.MemoryMiB, spec.CPUs)
	}
	if meta.Jailed != (jail != nil) {
		return SnapshotLoad{}, fmt.Errorf("snapshot was taken %s and cannot be restored %s: its disk paths are %s", jailWord(meta.Jailed), jailWord(jail != nil), jailPaths(meta.Jailed))
	}
	if len(meta.Drives) != len(p.drives) {
		return SnapshotLoad{}, fmt.Errorf("snapshot has %d disks, this VM %d", len(meta.Drives), len(p.drives))
	}
	for i, saved := range meta.Drives {
		now := p.drives[i]
		if saved.DriveID != now.DriveID || saved.PathOnHost != now.PathOnHost {
			return SnapshotLoad{}, fmt.Errorf("Firecracker reopens a snapshot's disks at their saved paths: drive %s was %q, this VM's is %q (a VM booted by an older banger gave absolute paths; boot it again and take a new snapshot)", saved.DriveID, saved.PathOnHost, now.PathOnHost)
		}
		if saved.IsReadOnly != now.IsReadOnly || saved.IsRootDevice != now.IsRootDevice {
			return SnapshotLoad{}, fmt.Errorf("drive %s: read-only/root flags differ from the snapshot's", saved.DriveID)
		}
	}
	load := SnapshotLoad{
		MemBackend: MemoryBackend{BackendType: "File"},
		ResumeVM:   true,
	}
	for _, n := range meta.Network {
		if n.HostDevName == p.nic.HostDevName && n.IfaceID == p.nic.IfaceID {
			continue
		}
		if n.IfaceID != p.nic.IfaceID {
			return SnapshotLoad{}, fmt.Errorf("snapshot's network interface is %q, banger's is %q", n.IfaceID, p.nic.IfaceID)
		}
		if versionLess(v, versionNetworkOverrides) {
			return SnapshotLoad{}, fmt.Errorf("Firecracker %s reopens the snapshot's TAP %q and cannot move the VM to %q (network_overrides needs Firecracker 1.12 or later)", versionString(v), n.HostDevName, p.nic.HostDevName)
		}
		load.NetworkOverrides = append(load.NetworkOverrides, NetworkOverride{IfaceID: n.IfaceID, HostDevName: p.nic.HostDevName})
	}
	if meta.VsockUDS != "" && meta.VsockUDS != p.vsock.UDSPath {
		if versionLess(v, versionVsockOverride) {
			return SnapshotLoad{}, fmt.Errorf("Firecracker %s binds the snapshot's vsock socket %q and cannot move it to %q (vsock_override needs Firecracker 1.16 or later)", versionString(v), meta.VsockUDS, p.vsock.UDSPath)
		}
		load.VsockOverride = &VsockOverride{UDSPath: p.vsock.UDSPath}
	}
	switch {
	case jail != nil:
		load.SnapshotPath, load.MemBackend.BackendPath = jailRestoreState, jailRestoreMem
	case r.Share:
		load.SnapshotPath, load.MemBackend.BackendPath = filepath.Join(r.Dir, FileSnapState), filepath.Join(r.Dir, FileSnapMem)
	default:
		load.SnapshotPath, load.MemBackend.BackendPath = filepath.Join(r.Dir, FileSnapState), filepath.Join(spec.Dir, fileRestoreMem)
	}
	return load, nil
}

func jailWord(jailed bool) string {
	if jailed {
		return "under the jailer"
	}
	return "without the jailer"
}

func jailPaths(jailed bool) string {
	if jailed {
		return "in-jail names"
	}
	return "names in the VM directory"
}

// addSnapshot puts a snapshot's files into the jail: the device state
// as a read-only copy (read once), the memory hard-linked when it is
// shared (vmm.Restore.Share: one page cache for every restored VM),
// else as the VM's own read-only copy.
func (p *JailPlan) addSnapshot(dir string, share bool) {
	p.Links = append(p.Links,
		JailLink{Src: filepath.Join(dir, FileSnapState), Name: jailRestoreState},
		JailLink{Src: filepath.Join(dir, FileSnapMem), Name: jailRestoreMem, Shared: share})
}

// prepareMemory (unjailed) makes the private memory copy of a restore
// without Share, and removes one a previous restore of this VM left. It
// unlinks before copying: the old file may still be mapped by a VMM
// that is ending, and must never be truncated under it.
func (d *Driver) prepareMemory(ctx context.Context, s *starting) error {
	own := filepath.Join(s.spec.Dir, fileRestoreMem)
	if err := os.Remove(own); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old memory copy: %w", err)
	}
	if s.plan.load == nil || s.plan.load.MemBackend.BackendPath != own {
		return nil
	}
	if err := system.CloneFile(ctx, filepath.Join(s.spec.Restore.Dir, FileSnapMem), own); err != nil {
		return fmt.Errorf("copy snapshot memory: %w", err)
	}
	s.undo = append(s.undo, func() { os.Remove(own) })
	return nil
}

// loadSnapshot configures the log and metrics (not part of a snapshot,
// and the only calls Firecracker takes before a load) and loads the
// snapshot, resuming the guest. A failed load ends Firecracker; the
// start's undo reaps it.
func (d *Driver) loadSnapshot(ctx context.Context, s *starting) error {
	c := NewClient(s.plan.state.APISocket)
	cctx, cancel := context.WithTimeout(ctx, configWait)
	defer cancel()
	if err := c.PutLogger(cctx, s.plan.logger); err != nil {
		return fmt.Errorf("logger: %w", err)
	}
	if err := c.PutMetrics(cctx, s.plan.metrics); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	lctx, lcancel := context.WithTimeout(ctx, loadWait)
	defer lcancel()
	if err := c.LoadSnapshot(lctx, *s.plan.load); err != nil {
		return fmt.Errorf("load snapshot %s: %w", s.spec.Restore.Dir, err)
	}
	return nil
}

// fcVersion is the version of the firecracker binary, asked once per
// binary file (an upgraded binary is a new file).
func (d *Driver) fcVersion(ctx context.Context) ([3]int, error) {
	path, err := exec.LookPath(d.binary())
	if err != nil {
		return [3]int{}, fmt.Errorf("find firecracker: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return [3]int{}, fmt.Errorf("find firecracker: %w", err)
	}
	key := fmt.Sprintf("%s %d %d", path, fi.Size(), fi.ModTime().UnixNano())
	versionCache.Lock()
	v, ok := versionCache.m[key]
	versionCache.Unlock()
	if ok {
		return v, nil
	}
	cmd := exec.CommandContext(ctx, path, "--version")
	cmd.Env = []string{"LC_ALL=C"}
	out, err := cmd.Output()
	if err != nil {
		return [3]int{}, fmt.Errorf("%s --version: %w", path, err)
	}
	v, err = doctor.ParseFirecrackerVersion(string(out))
	if err != nil {
		return [3]int{}, err
	}
	versionCache.Lock()
	versionCache.m[key] = v
	versionCache.Unlock()
	return v, nil
}

var versionCache = struct {
	sync.Mutex
	m map[string][3]int
}{m: map[string][3]int{}}

func versionLess(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func versionString(v [3]int) string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }
