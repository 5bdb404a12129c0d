package daemon

// Disks and snapshots. A VM's root and work disks are its own files; a
// snapshot turns them into read-only layers in the snapshot directory
// and gives the VM (and every VM restored from the snapshot) a
// copy-on-write overlay on them. A layer is never written again: VMs
// and later snapshots only read it, and it goes when its snapshot is
// deleted, which is refused while anything stands on it.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Disk names, for layer file names ("root.qcow2", "work.raw").
const (
	diskRoot = "root"
	diskWork = "work"
	// snapFileSeed is the source VM's seed disk: a restored guest has it
	// mounted, so its VMs get this exact content (their own identity
	// comes from the agent, not from the seed).
	snapFileSeed = "seed.ext4"
	// fileWorkOverlay is a VM's work disk when it is a qcow2 overlay
	// (QEMU, on a snapshot); FileWorkDisk is the raw one.
	fileWorkOverlay = "work.qcow2"
)

// VM-dir files a restored VM takes from its snapshot: the running
// services already use them (opencode's password; the placeholders the
// guest's credentials hold).
var snapCarriedFiles = []string{fileOpencodePassword, fileBrokerSecrets}

func layerName(disk, format string) string {
	if format == "qcow2" {
		return disk + ".qcow2"
	}
	return disk + ".raw"
}

// vmDisks are a VM's root and work disks as its VMM opens them, with
// their backing chains when they stand on a snapshot.
func (d *Daemon) vmDisks(ctx context.Context, vm store.VM, img store.Image) (root, work vmm.Disk, err error) {
	drv := d.driverFor(vm)
	bi := bootImage(img)
	root = drv.RootDisk(bi, vm.Dir)
	work = vmm.Disk{Path: filepath.Join(vm.Dir, paths.FileWorkDisk), Format: "raw"}
	if vm.SnapshotID == "" {
		return root, work, nil
	}
	if root.Format == "qcow2" {
		if root.Backing, err = d.layerChain(ctx, vm.SnapshotID, diskRoot, bi.Rootfs); err != nil {
			return root, work, err
		}
	}
	if wo := filepath.Join(vm.Dir, fileWorkOverlay); fileExists(wo) {
		work = vmm.Disk{Path: wo, Format: "qcow2"}
		if work.Backing, err = d.layerChain(ctx, vm.SnapshotID, diskWork, ""); err != nil {
			return root, work, err
		}
	}
	return root, work, nil
}

// workOverlayPath is where a VM's work overlay goes: qcow2 for a driver
// whose root disk is an overlay, a raw copy otherwise.
func (d *Daemon) workOverlayPath(vm store.VM, img store.Image) string {
	if d.driverFor(vm).RootDisk(bootImage(img), vm.Dir).Format == "qcow2" {
		return filepath.Join(vm.Dir, fileWorkOverlay)
	}
	return filepath.Join(vm.Dir, paths.FileWorkDisk)
}

// layerChain is the read-only chain under a disk standing on snapshot
// id, nearest first: that snapshot's layer, its parent's, down to a raw
// layer or (root) the image's rootfs.
func (d *Daemon) layerChain(ctx context.Context, id, disk, rootfs string) ([]vmm.Layer, error) {
	var chain []vmm.Layer
	for depth := 0; id != ""; depth++ {
		if depth > 64 {
			return nil, errors.New("snapshot chain deeper than 64: a loop?")
		}
		s, err := d.store.GetSnapshot(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s under the %s disk: %w", id, disk, err)
		}
		f := s.RootFormat
		if disk == diskWork {
			f = s.WorkFormat
		}
		l := vmm.Layer{Path: filepath.Join(s.Dir, layerName(disk, f)), Format: f}
		if !fileExists(l.Path) {
			return nil, api.Errorf(api.CodeUnavailable, "its files were removed behind banger's back: delete the VMs made from it, then the snapshot (`banger vm snapshot delete NAME`), and take a new one", "layer %s of snapshot %q is missing", filepath.Base(l.Path), s.Name)
		}
		chain = append(chain, l)
		if f != "qcow2" {
			return chain, nil
		}
		id = s.ParentID
	}
	if disk == diskRoot && rootfs != "" {
		return append(chain, vmm.Layer{Path: rootfs, Format: "raw"}), nil
	}
	return nil, fmt.Errorf("the %s disk's chain ends in an overlay with nothing under it", disk)
}

// layerVM turns a stopped VM's disks into snap's layers and gives the
// VM overlays on them. Every step checks what is already done, so
// reconcile can finish a run a crash interrupted.
func (d *Daemon) layerVM(ctx context.Context, vm *store.VM, img store.Image, snap *store.Snapshot) error {
	sn, err := d.snapshotter(*vm)
	if err != nil {
		return err
	}
	root, work, err := d.vmDisks(ctx, *vm, img)
	if err != nil && snap.RootFormat == "" {
		return err
	}
	if snap.RootFormat == "" {
		// The formats are recorded before the first file moves: after
		// that, the VM's own files no longer say what they were.
		snap.RootFormat, snap.WorkFormat = root.Format, work.Format
		if err := d.store.UpdateSnapshot(ctx, snap); err != nil {
			return err
		}
	} else {
		// A resumed run: the VM's files may be gone or be the new
		// overlays already; the record says what the layers are.
		root.Format, work.Format = snap.RootFormat, snap.WorkFormat
		root.Path = d.driverFor(*vm).RootDisk(bootImage(img), vm.Dir).Path
		work.Path = filepath.Join(vm.Dir, paths.FileWorkDisk)
		if work.Format == "qcow2" {
			work.Path = filepath.Join(vm.Dir, fileWorkOverlay)
		}
	}
	for _, disk := range []struct {
		name string
		d    vmm.Disk
		dst  string
	}{
		{diskRoot, root, root.Path},
		{diskWork, work, d.workOverlayPath(*vm, img)},
	} {
		layer := filepath.Join(snap.Dir, layerName(disk.name, disk.d.Format))
		if !fileExists(layer) {
			if err := os.Rename(disk.d.Path, layer); err != nil {
				return fmt.Errorf("move %s disk into the snapshot: %w", disk.name, err)
			}
		}
		if err := sealLayer(layer); err != nil {
			return err
		}
		if fileExists(disk.dst) {
			continue
		}
		// The chain under the new layer is what the VM's disk stood on.
		below := vmm.Disk{Path: layer, Format: disk.d.Format}
		if disk.d.Format == "qcow2" {
			rootfs := ""
			if disk.name == diskRoot {
				rootfs = bootImage(img).Rootfs
			}
			if below.Backing, err = d.layerChain(ctx, snap.ParentID, disk.name, rootfs); err != nil {
				return err
			}
		}
		if err := d.overlay(ctx, sn, below, disk.dst); err != nil {
			return fmt.Errorf("%s overlay: %w", disk.name, err)
		}
	}
	if err := copyIfMissing(ctx, filepath.Join(vm.Dir, paths.FileSeedDisk), filepath.Join(snap.Dir, snapFileSeed)); err != nil {
		return fmt.Errorf("keep seed disk: %w", err)
	}
	for _, f := range snapCarriedFiles {
		if err := copyIfMissing(ctx, filepath.Join(vm.Dir, f), filepath.Join(snap.Dir, f)); err != nil {
			return fmt.Errorf("keep %s: %w", f, err)
		}
	}
	if !fileExists(filepath.Join(snap.Dir, snapFileGuest)) {
		if err := writeSnapGuest(snap.Dir, *vm); err != nil {
			return fmt.Errorf("record guest setup: %w", err)
		}
	}
	vm.SnapshotID = snap.ID
	return d.store.UpdateVM(ctx, vm)
}

// overlay makes dst an overlay on layer, atomically: a crash leaves
// either no dst or a whole one.
func (d *Daemon) overlay(ctx context.Context, sn vmm.Snapshotter, layer vmm.Disk, dst string) error {
	tmp := dst + ".tmp"
	_ = os.Remove(tmp)
	if _, err := sn.OverlayDisk(ctx, d.runner, layer, tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// sealLayer makes a layer the daemon's, read-only: the VMM user that
// wrote it as its own disk must not be able to change what every VM
// standing on it reads.
func sealLayer(p string) error {
	if err := os.Chown(p, os.Geteuid(), os.Getegid()); err != nil && !errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("own layer %s: %w", filepath.Base(p), err)
	}
	return os.Chmod(p, 0o400)
}

// copyIfMissing copies src to dst (reflink or sparse) unless dst exists;
// a missing src is no error (a VM without opencode has no password).
func copyIfMissing(ctx context.Context, src, dst string) error {
	if fileExists(dst) || !fileExists(src) {
		return nil
	}
	tmp := dst + ".tmp"
	if err := system.CloneFile(ctx, src, tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// restoreLayers gives a new VM its overlays on snap and the snapshot's
// seed disk and carried files.
func (d *Daemon) restoreLayers(ctx context.Context, vm store.VM, img store.Image, snap store.Snapshot) error {
	sn, err := d.snapshotter(vm)
	if err != nil {
		return err
	}
	bi := bootImage(img)
	rootChain, err := d.layerChain(ctx, snap.ID, diskRoot, bi.Rootfs)
	if err != nil {
		return err
	}
	workChain, err := d.layerChain(ctx, snap.ID, diskWork, "")
	if err != nil {
		return err
	}
	for _, disk := range []struct {
		chain []vmm.Layer
		dst   string
	}{
		{rootChain, d.driverFor(vm).RootDisk(bi, vm.Dir).Path},
		{workChain, d.workOverlayPath(vm, img)},
	} {
		top := vmm.Disk{Path: disk.chain[0].Path, Format: disk.chain[0].Format, Backing: disk.chain[1:]}
		if err := d.overlay(ctx, sn, top, disk.dst); err != nil {
			return err
		}
	}
	if err := copyIfMissing(ctx, filepath.Join(snap.Dir, snapFileSeed), filepath.Join(vm.Dir, paths.FileSeedDisk)); err != nil {
		return fmt.Errorf("seed disk: %w", err)
	}
	for _, f := range snapCarriedFiles {
		if err := copyIfMissing(ctx, filepath.Join(snap.Dir, f), filepath.Join(vm.Dir, f)); err != nil {
			return fmt.Errorf("copy %s: %w", f, err)
		}
	}
	return nil
}

// flattenVM copies the data a stopped VM reads from snapshot layers
// into its own disks, so the snapshot can go (`vm snapshot delete
// --force`). qcow2 overlays are rebased onto the image (root) or
// converted to a raw disk (work); raw disks are copies already.
func (d *Daemon) flattenVM(ctx context.Context, name string) error {
	unlock := d.lockVM(name)
	defer unlock()
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return err
	}
	if vm.State != api.VMStopped || d.driverFor(vm).Alive(d.proc(vm)) {
		return api.Errorf(api.CodeConflict, fmt.Sprintf("stop it first (`banger vm stop %s`) or delete it", vm.Name), "VM %q is %s; only a stopped VM can be flattened", vm.Name, vm.State)
	}
	img, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return err
	}
	root, work, err := d.vmDisks(ctx, vm, img)
	if err != nil {
		return err
	}
	if err := checkVMOverlays(root, work); err != nil {
		return fmt.Errorf("flatten %s: %w", vm.Name, err)
	}
	if root.Format == "qcow2" {
		// Safe mode: the overlay gets every block that differs from
		// the new base.
		if _, err := d.runner.Run(ctx, "qemu-img", "rebase", "-q", "-f", "qcow2", "-b", bootImage(img).Rootfs, "-F", "raw", root.Path); err != nil {
			return fmt.Errorf("flatten root disk of %s: %w", vm.Name, err)
		}
	}
	if work.Format == "qcow2" {
		raw := filepath.Join(vm.Dir, paths.FileWorkDisk)
		if _, err := d.runner.Run(ctx, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", work.Path, raw+".tmp"); err != nil {
			_ = os.Remove(raw + ".tmp")
			return fmt.Errorf("flatten work disk of %s: %w", vm.Name, err)
		}
		if err := os.Rename(raw+".tmp", raw); err != nil {
			return err
		}
		_ = os.Remove(work.Path)
	}
	vm.SnapshotID = ""
	return d.store.UpdateVM(ctx, &vm)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
