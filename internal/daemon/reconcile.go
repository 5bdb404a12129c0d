package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// reconcile re-adopts the VMs a previous daemon left running. SQLite says
// what should exist; /proc (PID plus start time), QMP and the agent say
// what does. The VMM's control socket is QMP or Firecracker's API,
// whichever driver the VM was created with. Only this instance's records
// and processes are touched, so another banger instance's VMs are never
// affected. Around that, sweepVMMs and sweepFiles remove whatever a daemon
// killed at any moment left without an owner, and say so in one log line.
func (d *Daemon) reconcile(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var rep sweepReport
	// Orphaned VMMs first, so that nothing still writes into a directory
	// removed below.
	if err := d.sweepVMMs(ctx, vms, &rep); err != nil {
		return fmt.Errorf("sweep VMM processes: %w", err)
	}
	for _, vm := range vms {
		log := d.log.With("vm", vm.Name, "id", vm.ID)
		alive := d.driverFor(vm).Alive(d.proc(vm))
		switch {
		case vm.State == api.VMCreating:
			// The create operation died with the previous daemon: unwind
			// it fully, as a failed create would have.
			if alive {
				_ = d.driverFor(vm).Stop(ctx, vm.Dir, d.proc(vm), true, 0)
			}
			if err := d.removeVMMLeftovers(ctx, vm); err != nil {
				log.Warn("leftovers of interrupted create", "err", err)
			}
			os.RemoveAll(vm.Dir)
			if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
				return err
			}
			log.Warn("removed VM whose create was interrupted by a daemon restart")
		case alive:
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := d.vmmStatus(sctx, vm)
			cancel()
			if err == nil && savingStatus(st) {
				// A daemon killed during a snapshot or park left the
				// guest paused half-saved: nothing can resume it
				// safely, so it is stopped (its disks are intact).
				_ = d.driverFor(vm).Stop(ctx, vm.Dir, d.proc(vm), true, 0)
				os.RemoveAll(parkDir(vm))
				if err := d.store.SetVMState(ctx, vm.ID, api.VMStopped, "stopped: a daemon restart interrupted its snapshot or park"); err != nil {
					return err
				}
				log.Warn("stopped VM whose snapshot or park was interrupted by a daemon restart", "vmm_status", st)
				continue
			}
			if err != nil {
				log.Warn("adopted VMM does not answer on its control socket", "vmm", vm.VMM, "err", err)
			} else {
				log.Info("re-adopted running VM", "pid", vm.PID, "vmm", vm.VMM, "vmm_status", st)
			}
			if vm.State != api.VMRunning {
				if err := d.store.SetVMState(ctx, vm.ID, api.VMRunning, ""); err != nil {
					return err
				}
			}
			vm.State = api.VMRunning
			// The previous daemon's console pump died with it.
			d.keepConsole(d.ops.base, vm)
			// Its guest's connections wait for a gateway; its guest holds
			// the placeholders of its last boot.
			if d.broker != nil && vm.Credentials == config.CredentialsBroker {
				d.broker.restoreVM(brokerRef(&vm), vm.Dir)
			}
			d.egress.supervise(vm)
			// Reconnect the agent in the background; exec redials anyway.
			go func() {
				actx, cancel := context.WithTimeout(d.ops.base, 30*time.Second)
				defer cancel()
				if _, err := d.agent(actx, vm); err != nil {
					log.Warn("agent of adopted VM not answering", "err", err)
					return
				}
				log.Info("agent reconnected")
			}()
		case vm.State == api.VMParked:
			// Its VMM is gone by design; its saved state waits in its
			// directory for the next use.
		default:
			os.RemoveAll(parkDir(vm))
			if vm.State != api.VMStopped {
				if err := d.store.SetVMState(ctx, vm.ID, api.VMStopped, vm.LastError); err != nil {
					return err
				}
				vm.PID, vm.PIDStartTime = 0, 0
				log.Info("VM's VMM is gone; marked stopped")
			}
		}
	}
	if err := d.reconcileSnapshots(ctx); err != nil {
		return fmt.Errorf("reconcile snapshots: %w", err)
	}
	if n, err := d.store.SweepEgressLog(ctx); err != nil {
		d.log.Warn("sweep egress log", "err", err)
	} else if n > 0 {
		d.log.Info("removed egress log rows of deleted VMs", "rows", n)
	}
	if err := d.sweepFiles(ctx, &rep); err != nil {
		return fmt.Errorf("sweep leftovers: %w", err)
	}
	rep.log(d.log)
	return nil
}

// sweepReport is what a start-up sweep removed, for the log line.
type sweepReport struct {
	procs, vmDirs, buildDirs, imageDirs, tempFiles []string
}

// sweepVMMs stops what a daemon killed at any moment left running: every
// VMM process of this instance that is not the recorded, live VMM of a
// VM row. That is a create killed between starting the VMM and recording
// its PID (its row says creating), a provisioning or verify VM (they never
// have a row), a boot whose retry replaced it. It runs before the socket
// is served, under the state directory's lock, so none of them belongs to
// an operation in flight.
func (d *Daemon) sweepVMMs(ctx context.Context, vms []store.VM, rep *sweepReport) error {
	live := map[string]vmm.Process{}
	for _, vm := range vms {
		// A creating row is unwound below, whatever its VMM does.
		if vm.State != api.VMCreating && d.driverFor(vm).Alive(d.proc(vm)) {
			live[vm.ID] = d.proc(vm)
		}
	}
	// Look again after each round: a QEMU launcher killed while it
	// daemonized may have forked its VM process after the first look.
	seen := map[vmmProc]bool{}
	for range 5 {
		procs, err := instanceVMMs(d.layout.InstancePrefix(), d.layout.VMsDir)
		if err != nil {
			return err
		}
		var killed []vmmProc
		for _, p := range procs {
			if lp, ok := live[p.id]; (ok && lp.PID == p.pid && lp.StartTime == p.start) || seen[p] {
				continue
			}
			seen[p] = true
			// The VM is discarded: no polite power-off, nothing it
			// writes now is kept.
			if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				d.log.Warn("stop orphaned VMM", "pid", p.pid, "vm_id", p.id, "err", err)
				continue
			}
			killed = append(killed, p)
			rep.procs = append(rep.procs, fmt.Sprintf("%s(pid %d)", p.id, p.pid))
		}
		if len(killed) == 0 {
			return nil
		}
		for _, p := range killed {
			alive := func(vmm.Process) bool { return system.ProcAlive(p.pid, p.start) }
			if !vmm.WaitGone(ctx, alive, vmm.Process{PID: p.pid, StartTime: p.start}, 5*time.Second) {
				d.log.Warn("orphaned VMM did not exit after SIGKILL", "pid", p.pid, "vm_id", p.id)
			}
		}
	}
	return nil
}

// sweepFiles removes every directory under vms/ without a VM row, every
// image build's scratch directory, every directory under images/ without
// an image row (a build, derive or import cut short) and the cache's
// temporary files. Like sweepVMMs it runs before anything is served.
func (d *Daemon) sweepFiles(ctx context.Context, rep *sweepReport) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return err
	}
	remove := func(p string, list *[]string) {
		if err := os.RemoveAll(p); err != nil {
			d.log.Warn("remove leftover", "path", p, "err", err)
			return
		}
		*list = append(*list, filepath.Base(p))
	}
	vmRows := make([]ownedDir, 0, len(vms))
	for _, vm := range vms {
		vmRows = append(vmRows, ownedDir{vm.ID, vm.Dir})
	}
	imgRows := make([]ownedDir, 0, len(imgs))
	for _, img := range imgs {
		imgRows = append(imgRows, ownedDir{img.ID, img.Dir})
	}
	d.sweepDirs(d.layout.VMsDir, "VM", vmRows, func(p string) { remove(p, &rep.vmDirs) })
	d.sweepDirs(d.layout.ImagesDir, "image", imgRows, func(p string) { remove(p, &rep.imageDirs) })
	entries, _ := os.ReadDir(d.layout.CacheDir)
	for _, e := range entries {
		n, p := e.Name(), filepath.Join(d.layout.CacheDir, e.Name())
		switch {
		case strings.HasPrefix(n, buildDirPrefix) && e.IsDir():
			remove(p, &rep.buildDirs)
		case isTempName(n):
			remove(p, &rep.tempFiles)
		}
	}
	// A client key write cut short (sshkeys writes through a temp file).
	entries, _ = os.ReadDir(d.layout.SSHDir)
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-") {
			remove(filepath.Join(d.layout.SSHDir, n), &rep.tempFiles)
		}
	}
	return nil
}

// ownedDir is a row's id and the directory the row records.
type ownedDir struct{ id, dir string }

// sweepDirs removes every entry of parent that no row owns. Entries are
// matched to rows by name (a row's directory is parent/ID), never by the
// path a row records: the state directory may be reached through another
// path (a symlinked BANGER_HOME, a bind mount) than the one the rows were
// written with, and comparing paths would take every live VM's directory,
// work disk included, for a leftover. If any row's directory is not in
// parent, even after resolving links, the rows and this layout disagree
// about where things live, and nothing is removed.
func (d *Daemon) sweepDirs(parent, kind string, rows []ownedDir, remove func(string)) {
	entries, err := os.ReadDir(parent)
	if err != nil || len(entries) == 0 {
		return
	}
	realParent, err := filepath.EvalSymlinks(parent)
	if err != nil {
		d.log.Warn("leftover sweep skipped: cannot resolve directory", "kind", kind, "dir", parent, "err", err)
		return
	}
	owned := map[string]bool{}
	for _, r := range rows {
		owned[r.id] = true
		if filepath.Base(r.dir) == r.id {
			if rp, err := filepath.EvalSymlinks(filepath.Dir(filepath.Clean(r.dir))); err == nil && rp == realParent {
				continue
			}
		}
		d.log.Warn("leftover sweep skipped: a row's directory is outside the state directory",
			"kind", kind, "id", r.id, "row_dir", r.dir, "dir", parent)
		return
	}
	for _, e := range entries {
		if n := e.Name(); paths.CheckID(n) == nil && !owned[n] {
			remove(filepath.Join(parent, n))
		}
	}
}

// buildDirPrefix names an image build's scratch directory in the cache.
const buildDirPrefix = "build-"

// isTempName matches the cache's temporary files: workspace and pull
// bundles, and half-written atomic writes (system.WriteFileAtomic).
func isTempName(n string) bool {
	return (strings.HasSuffix(n, ".bundle") && (strings.HasPrefix(n, "workspace-") || strings.HasPrefix(n, "pull-"))) ||
		(strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-"))
}

func (r sweepReport) log(l *slog.Logger) {
	l.Info("swept leftovers of a previous daemon",
		"vmm_processes", len(r.procs), "vmm_names", strings.Join(r.procs, ","),
		"vm_dirs", len(r.vmDirs), "vm_dir_names", strings.Join(r.vmDirs, ","),
		"build_dirs", len(r.buildDirs), "build_dir_names", strings.Join(r.buildDirs, ","),
		"image_dirs", len(r.imageDirs), "image_dir_names", strings.Join(r.imageDirs, ","),
		"temp_files", len(r.tempFiles), "temp_file_names", strings.Join(r.tempFiles, ","))
}

// vmmProc is a running VMM of this instance, named by its VM id.
type vmmProc struct {
	pid   int
	start uint64
	id    string
}

// instanceVMMs lists the VMM processes of the instance with prefix, from
// their command lines.
func instanceVMMs(prefix, vmsDir string) ([]vmmProc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var out []vmmProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		id, ok := vmmIDFromArgs(strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"), prefix, vmsDir)
		if !ok {
			continue
		}
		st, err := system.ProcStartTime(pid)
		if err != nil || !system.ProcAlive(pid, st) {
			continue
		}
		out = append(out, vmmProc{pid: pid, start: st, id: id})
	}
	return out, nil
}

// vmmIDFromArgs says whether a command line is a VMM of this instance and
// of which VM. QEMU carries its name `PREFIX-ID` (`-name N,process=N`);
// Firecracker its API socket in the VM's directory (`--api-sock
// VMSDIR/ID/fc.sock`). Only an exact match counts: the prefix is followed
// by '-', and the directory is this instance's, so another instance's
// VMMs never match.
func vmmIDFromArgs(args []string, prefix, vmsDir string) (string, bool) {
	for i, a := range args {
		if i > 0 && args[i-1] == "-name" {
			for _, part := range strings.Split(a, ",") {
				part = strings.TrimPrefix(part, "process=")
				if id, ok := strings.CutPrefix(part, prefix+"-"); ok && paths.CheckID(id) == nil {
					return id, true
				}
			}
		}
		if i > 0 && args[i-1] == "--api-sock" {
			if rest, ok := strings.CutPrefix(a, vmsDir+"/"); ok {
				if id, _, ok := strings.Cut(rest, "/"); ok && paths.CheckID(id) == nil {
					return id, true
				}
			}
		}
	}
	return "", false
}

// savingStatus says a VMM's status is that of a guest paused for a save
// (QEMU's paused, finish-migrate, postmigrate; Firecracker's Paused).
func savingStatus(st string) bool {
	st = strings.ToLower(st)
	return strings.Contains(st, "paus") || strings.Contains(st, "migrat")
}
