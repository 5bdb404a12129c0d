package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Files of a QEMU snapshot directory.
const (
	fileSnapMeta  = "qemu-snapshot.json"
	fileSnapState = "qemu-state.bin" // QEMU's migration stream
	fileSnapMem   = "qemu-mem.raw"   // guest RAM, sparse
)

// snapMetaVersion is the metadata format this driver writes and reads.
const snapMetaVersion = 1

// stateMagic starts every QEMU migration stream (QEMU_VM_FILE_MAGIC).
var stateMagic = []byte("QEVM")

// maxSnapMeta caps the metadata file: it is read before anything else
// of a snapshot, which may be foreign or damaged.
const maxSnapMeta = 64 << 10

// snapMeta describes a snapshot directory.
type snapMeta struct {
	Version int    `json:"version"`
	Compat  string `json:"compat"`
	// RAMInFile: guest RAM is in fileSnapMem and not in the state
	// stream (saved with x-ignore-shared); a restore sets the same
	// capability. Otherwise the stream carries RAM.
	RAMInFile bool `json:"ram_in_file"`
	// MemBytes is fileSnapMem's size (guest RAM); StateBytes the state
	// file's.
	MemBytes   int64  `json:"mem_bytes"`
	StateBytes int64  `json:"state_bytes"`
	MemoryMiB  int    `json:"memory_mib"`
	CPUs       int    `json:"cpus"`
	Accel      string `json:"accel"`
	Kernel     string `json:"kernel"`
	Initrd     string `json:"initrd,omitempty"`
	Cmdline    string `json:"cmdline"`
}

// parseSnapMeta parses and checks metadata bytes.
func parseSnapMeta(b []byte) (snapMeta, error) {
	var m snapMeta
	if len(b) > maxSnapMeta {
		return m, fmt.Errorf("metadata larger than %d bytes", maxSnapMeta)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("parse metadata: %w", err)
	}
	switch {
	case m.Version != snapMetaVersion:
		return m, fmt.Errorf("metadata version %d, want %d", m.Version, snapMetaVersion)
	case m.MemoryMiB <= 0 || m.MemoryMiB > 1<<20:
		return m, fmt.Errorf("bad memory size %d MiB", m.MemoryMiB)
	case m.CPUs <= 0 || m.CPUs > 1024:
		return m, fmt.Errorf("bad CPU count %d", m.CPUs)
	case m.RAMInFile && m.MemBytes != int64(m.MemoryMiB)<<20:
		return m, fmt.Errorf("memory file size %d does not match %d MiB", m.MemBytes, m.MemoryMiB)
	case !m.RAMInFile && m.MemBytes != 0:
		return m, errors.New("memory file size set but RAM is in the state stream")
	case m.StateBytes < int64(len(stateMagic)):
		return m, fmt.Errorf("bad state size %d", m.StateBytes)
	case m.Accel != "tcg" && m.Accel != "kvm":
		return m, fmt.Errorf("bad accelerator %q", m.Accel)
	case m.Kernel == "":
		return m, errors.New("no kernel recorded")
	}
	return m, nil
}

// readSnapshot reads dir's metadata and checks its files against it.
func readSnapshot(dir string) (snapMeta, error) {
	m, err := readSnapshotFiles(dir)
	if err != nil {
		return m, fmt.Errorf("snapshot %s is unusable (truncated, corrupt or not a QEMU snapshot): %w", dir, err)
	}
	return m, nil
}

func readSnapshotFiles(dir string) (snapMeta, error) {
	f, err := os.Open(filepath.Join(dir, fileSnapMeta))
	if err != nil {
		return snapMeta{}, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSnapMeta+1))
	f.Close()
	if err != nil {
		return snapMeta{}, err
	}
	m, err := parseSnapMeta(b)
	if err != nil {
		return m, err
	}
	st, err := os.Open(filepath.Join(dir, fileSnapState))
	if err != nil {
		return m, err
	}
	defer st.Close()
	if fi, err := st.Stat(); err != nil {
		return m, err
	} else if !fi.Mode().IsRegular() || fi.Size() != m.StateBytes {
		return m, fmt.Errorf("state file is %d bytes, metadata says %d", fi.Size(), m.StateBytes)
	}
	head := make([]byte, len(stateMagic))
	if _, err := io.ReadFull(st, head); err != nil {
		return m, fmt.Errorf("read state file: %w", err)
	}
	if !bytes.Equal(head, stateMagic) {
		return m, fmt.Errorf("state file does not start with QEMU's migration magic (%q)", head)
	}
	if m.RAMInFile {
		fi, err := os.Stat(filepath.Join(dir, fileSnapMem))
		if err != nil {
			return m, err
		}
		if !fi.Mode().IsRegular() || fi.Size() != m.MemBytes {
			return m, fmt.Errorf("memory file is %d bytes, metadata says %d", fi.Size(), m.MemBytes)
		}
	}
	return m, nil
}

// fits says whether spec describes the saved machine.
func (m snapMeta) fits(spec vmm.Spec) error {
	if spec.MemoryMiB != m.MemoryMiB || spec.CPUs != m.CPUs {
		return fmt.Errorf("saved with %d MiB and %d CPUs, asked for %d MiB and %d CPUs", m.MemoryMiB, m.CPUs, spec.MemoryMiB, spec.CPUs)
	}
	accel := spec.Accel
	if accel == "" {
		accel = "tcg"
	}
	if accel != m.Accel {
		return fmt.Errorf("saved under %s, asked to run under %s", m.Accel, accel)
	}
	return nil
}

// CheckSnapshot implements vmm.Snapshotter.
func (d *Driver) CheckSnapshot(dir string) error {
	_, err := readSnapshot(dir)
	return err
}

// SnapshotCompat implements vmm.Snapshotter: the QEMU version, the
// accelerator and the CPU model the guest saw.
func (d *Driver) SnapshotCompat(ctx context.Context, accel string) (string, error) {
	v, err := d.qemuVersion(ctx)
	if err != nil {
		return "", err
	}
	cpu := "max"
	if accel == "kvm" {
		cpu = "host " + hostCPUModel()
	} else {
		accel = "tcg"
	}
	return "qemu " + v + "; accel " + accel + "; cpu " + cpu, nil
}

func (d *Driver) qemuVersion(ctx context.Context) (string, error) {
	d.versionMu.Lock()
	defer d.versionMu.Unlock()
	if d.version != "" {
		return d.version, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.binary(), "--version")
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w", d.binary(), err)
	}
	v, err := parseQEMUVersion(string(out))
	if err != nil {
		return "", err
	}
	d.version = v
	return v, nil
}

// parseQEMUVersion reads "QEMU emulator version 7.2.22 (Debian ...)".
func parseQEMUVersion(out string) (string, error) {
	line, _, _ := strings.Cut(out, "\n")
	_, rest, ok := strings.Cut(line, "version ")
	if !ok {
		return "", fmt.Errorf("unexpected qemu --version output %q", line)
	}
	v, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
	if v == "" {
		return "", fmt.Errorf("unexpected qemu --version output %q", line)
	}
	return v, nil
}

func hostCPUModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// OverlayDisk implements vmm.Snapshotter: a qcow2 overlay on layer,
// whose chain (layer, then layer's own) QEMU gets as read-only
// descriptors.
func (d *Driver) OverlayDisk(ctx context.Context, r system.Runner, layer vmm.Disk, path string) (vmm.Disk, error) {
	format := layer.Format
	if format == "" {
		format = "raw"
	}
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", layer.Path, "-F", format, path); err != nil {
		return vmm.Disk{}, fmt.Errorf("create overlay on %s: %w", filepath.Base(layer.Path), err)
	}
	chain := append([]vmm.Layer{{Path: layer.Path, Format: format}}, layer.Backing...)
	return vmm.Disk{Path: path, Format: "qcow2", Backing: chain}, nil
}

// Timeouts of a save and a restore: TCG, a busy host and a few GiB of
// RAM streamed in the state file take seconds, not minutes.
const (
	saveTimeout    = 5 * time.Minute
	restoreTimeout = 5 * time.Minute
)

// Save implements vmm.Snapshotter.
func (d *Driver) Save(ctx context.Context, dir string, p vmm.Process, dst string) (saved vmm.Saved, err error) {
	st, err := parseProcState(p.State)
	if err != nil {
		return saved, err
	}
	if st.RAM == "" || st.RAMFD <= 0 || st.MemoryMiB <= 0 {
		return saved, errors.New("save snapshot: the VM was started by a banger without snapshots; restart it first")
	}
	if !d.Alive(p) {
		return saved, errors.New("save snapshot: the VM is not running")
	}
	watch := &stateWatch{}
	defer func() {
		// Save always ends the VMM: after a failure its guest state is
		// unknown (paused, half-migrated).
		if kerr := d.Stop(context.WithoutCancel(ctx), dir, p, true, 0); kerr != nil && err == nil {
			err = fmt.Errorf("save snapshot: %w", kerr)
		}
		if werr := watch.stop(); werr != nil && err == nil {
			err = werr
		}
		if err != nil {
			err = fmt.Errorf("save snapshot: %w", err)
		}
	}()
	deadline := time.Now().Add(saveTimeout)
	s, err := dialSession(ctx, filepath.Join(dir, paths.FileQMPSocket))
	if err != nil {
		return saved, err
	}
	defer s.close()
	if _, err := s.run(ctx, qmpTimeout, "stop", nil, nil); err != nil {
		return saved, err
	}
	// Own memory is mapped share=on: leave it out of the stream and
	// copy it from the memfd. A shared snapshot's memory (share=off)
	// is not what the guest sees, so its RAM goes in the stream.
	ramInFile := st.RAM == ramOwn
	caps := map[string]any{"capabilities": []capability{{Capability: "x-ignore-shared", State: ramInFile}}}
	if _, err := s.run(ctx, qmpTimeout, "migrate-set-capabilities", caps, nil); err != nil {
		return saved, err
	}
	// The guest is paused: no reason to throttle (7.2's default is
	// 128 MiB/s).
	if _, err := s.run(ctx, qmpTimeout, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}, nil); err != nil {
		return saved, err
	}
	statePath := filepath.Join(dst, fileSnapState)
	sf, err := os.OpenFile(statePath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return saved, err
	}
	defer sf.Close()
	// QEMU writes the file through its own descriptor, at its own pace:
	// one that a guest took over is killed once the file outgrows any
	// save of this much memory, so it cannot fill the host's disk.
	watch.start(sf, maxStateStream(st.MemoryMiB), func() {
		if d.Alive(p) {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	})
	// QEMU may not exec (spawn=deny): it writes to a descriptor.
	if _, err := s.run(ctx, qmpTimeout, "getfd", map[string]any{"fdname": "snapstate"}, sf); err != nil {
		return saved, err
	}
	if _, err := s.run(ctx, qmpTimeout, "migrate", map[string]any{"uri": "fd:snapstate"}, nil); err != nil {
		return saved, err
	}
	if err := s.waitMigration(ctx, deadline); err != nil {
		return saved, errors.Join(err, watch.err())
	}
	if err := watch.err(); err != nil {
		return saved, err
	}
	if err := sf.Sync(); err != nil {
		return saved, fmt.Errorf("sync state file: %w", err)
	}
	stateFI, err := sf.Stat()
	if err != nil {
		return saved, err
	}
	meta := snapMeta{
		Version: snapMetaVersion, RAMInFile: ramInFile, StateBytes: stateFI.Size(),
		MemoryMiB: st.MemoryMiB, CPUs: st.CPUs, Accel: st.Accel,
		Kernel: st.Kernel, Initrd: st.Initrd, Cmdline: st.Cmdline,
	}
	if meta.Accel == "" {
		meta.Accel = "tcg"
	}
	if meta.Compat, err = d.SnapshotCompat(ctx, meta.Accel); err != nil {
		return saved, err
	}
	if ramInFile {
		n, err := d.saveMemory(ctx, p, st, filepath.Join(dst, fileSnapMem))
		if err != nil {
			return saved, err
		}
		meta.MemBytes = int64(st.MemoryMiB) << 20
		saved.MemoryBytes = n
	} else {
		// The stream holds RAM's non-zero pages.
		saved.MemoryBytes = stateFI.Size()
		saved.RAMInState = true
	}
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return saved, err
	}
	if err := system.WriteFileAtomic(filepath.Join(dst, fileSnapMeta), b, 0o600); err != nil {
		return saved, err
	}
	// Done with the guest: QEMU exits (the deferred Stop kills one
	// that does not).
	if _, err := s.run(ctx, 2*time.Second, "quit", nil, nil); err == nil {
		waitGone(ctx, d, p, 5*time.Second)
	}
	for _, f := range []string{fileSnapMeta, fileSnapState, fileSnapMem} {
		if fi, err := os.Stat(filepath.Join(dst, f)); err == nil {
			if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
				saved.Bytes += sys.Blocks * 512
			}
		}
	}
	return saved, nil
}

// saveMemory copies the paused guest's RAM from QEMU's memfd into path
// (sparse: untouched and all-zero pages are holes) and returns the
// bytes of guest memory it holds.
func (d *Driver) saveMemory(ctx context.Context, p vmm.Process, st procState, path string) (int64, error) {
	size := int64(st.MemoryMiB) << 20
	// Through QEMU's descriptor: the daemon may have been restarted
	// since it made the memfd.
	src, err := openGuestRAM(p.PID, st.RAMFD, os.O_RDONLY, size)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	// The process must still be the one whose descriptor we opened.
	if !d.Alive(p) {
		return 0, errors.New("qemu exited during the save")
	}
	out, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return 0, err
	}
	n, err := copyData(ctx, src, out, size)
	if err != nil {
		return n, fmt.Errorf("copy guest memory: %w", err)
	}
	if err := out.Sync(); err != nil {
		return n, fmt.Errorf("sync memory file: %w", err)
	}
	return n, nil
}

// incoming loads the snapshot's state into a QEMU started with
// -incoming defer and waits until the guest runs.
func (d *Driver) incoming(ctx context.Context, spec vmm.Spec, m snapMeta, exited <-chan struct{}, pid, ramFD int) error {
	deadline := time.Now().Add(restoreTimeout)
	s, err := dialSession(ctx, filepath.Join(spec.Dir, paths.FileQMPSocket))
	if err != nil {
		return err
	}
	defer s.close()
	caps := map[string]any{"capabilities": []capability{{Capability: "x-ignore-shared", State: m.RAMInFile}}}
	if _, err := s.run(ctx, qmpTimeout, "migrate-set-capabilities", caps, nil); err != nil {
		return err
	}
	sf, err := os.Open(filepath.Join(spec.Restore.Dir, fileSnapState))
	if err != nil {
		return err
	}
	defer sf.Close()
	if _, err := s.run(ctx, qmpTimeout, "getfd", map[string]any{"fdname": "snapstate"}, sf); err != nil {
		return err
	}
	if _, err := s.run(ctx, qmpTimeout, "migrate-incoming", map[string]any{"uri": "fd:snapstate"}, nil); err != nil {
		return err
	}
	// A file never blocks, so QEMU loads it in one go and its monitor
	// answers again only afterwards.
	if err := s.waitMigration(ctx, deadline); err != nil {
		return err
	}
	if !m.RAMInFile {
		// Loading a stream reads every page of the new memory to
		// skip the zero ones, and a read of a memfd hole allocates:
		// the guest's untouched memory would all cost host memory.
		// The guest is paused: its zero pages go back to holes.
		if err := punchZeroPages(ctx, pid, ramFD, int64(m.MemoryMiB)<<20); err != nil {
			return fmt.Errorf("give back the guest's zero pages: %w", err)
		}
	}
	// The guest was paused for the save, and QEMU restores that run
	// state: it continues only when told.
	status, err := s.status(ctx)
	if err != nil {
		return err
	}
	if spec.Restore.Paused {
		if status != "paused" {
			return fmt.Errorf("guest is %q after loading, want paused", status)
		}
		return nil
	}
	if status == "paused" {
		if _, err := s.run(ctx, qmpTimeout, "cont", nil, nil); err != nil {
			return err
		}
		if status, err = s.status(ctx); err != nil {
			return err
		}
	}
	select {
	case <-exited:
		return errors.New("qemu exited after loading the snapshot")
	default:
	}
	if status != "running" {
		return fmt.Errorf("guest is %q after loading", status)
	}
	return nil
}

// stateSlack is what a migration stream may hold besides guest RAM
// (device state, section headers); a variable for tests.
var stateSlack int64 = 64 << 20

// maxStateStream bounds the state file of a guest with memMiB of RAM:
// all of it streamed, page headers (8 bytes a 4 KiB page) and device
// state.
func maxStateStream(memMiB int) int64 {
	ram := int64(memMiB) << 20
	return ram + ram/256 + stateSlack
}

// stateWatch kills a VMM whose state file outgrows a limit.
type stateWatch struct {
	done chan struct{}
	over chan struct{}
	wg   sync.WaitGroup
	size atomic.Int64
}

func (w *stateWatch) start(f *os.File, limit int64, kill func()) {
	w.done, w.over = make(chan struct{}), make(chan struct{})
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if fi, err := f.Stat(); err == nil && fi.Size() > limit {
				w.size.Store(fi.Size())
				kill()
				close(w.over)
				return
			}
			select {
			case <-w.done:
				return
			case <-t.C:
			}
		}
	}()
}

// err says whether the limit was passed.
func (w *stateWatch) err() error {
	if w.over == nil {
		return nil
	}
	select {
	case <-w.over:
		return fmt.Errorf("qemu wrote %d bytes of state, more than a save of its memory can be: killed", w.size.Load())
	default:
		return nil
	}
}

// stop ends the watch (after the VMM is gone) and reports as err does.
func (w *stateWatch) stop() error {
	if w.done == nil {
		return nil
	}
	close(w.done)
	w.wg.Wait()
	return w.err()
}
