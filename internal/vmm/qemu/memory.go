package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Guest RAM is a memfd the driver makes and QEMU inherits, so that Save
// can read the guest's pages straight from it (through
// /proc/<pid>/fd/N, even from a restarted daemon) while only device
// state goes through QEMU's migration stream, and so that restores can
// share one sealed copy of a snapshot's memory.
const (
	// ramOwn: the VM's own memfd, mapped share=on. Save skips RAM in
	// the migration stream (x-ignore-shared) and copies the memfd.
	ramOwn = "memfd"
	// ramShared: a sealed memfd shared by every VM restored from one
	// snapshot, mapped share=off (copy-on-write). Its pages are the
	// snapshot's, not the guest's, so Save streams RAM.
	ramShared = "sealed"
)

// procState is what Process.State holds for a QEMU VM (JSON).
type procState struct {
	// RAM is ramOwn or ramShared; empty for a VM started before RAM was
	// a memfd (Save refuses it).
	RAM string `json:"ram,omitempty"`
	// RAMFD is the memfd's descriptor number inside QEMU.
	RAMFD int `json:"ram_fd,omitempty"`
	// Kernel, Initrd and Cmdline are what the VM booted with: a restore
	// needs the same command line (the kernel's option ROM and fw_cfg
	// files are part of the machine the state was saved from).
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	// The machine's shape, which a restore must match.
	MemoryMiB int    `json:"memory_mib,omitempty"`
	CPUs      int    `json:"cpus,omitempty"`
	Accel     string `json:"accel,omitempty"`
}

func (s procState) encode() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// maxStateJSON caps Process.State: it comes back from the daemon's
// store, never from a guest, but a parser of stored bytes stays bounded.
const maxStateJSON = 64 << 10

func parseProcState(s string) (procState, error) {
	var st procState
	if s == "" {
		return st, nil
	}
	if len(s) > maxStateJSON {
		return st, errors.New("qemu process state too large")
	}
	if err := json.Unmarshal([]byte(s), &st); err != nil {
		return st, fmt.Errorf("parse qemu process state: %w", err)
	}
	return st, nil
}

// newMemfd makes an empty memfd of size bytes. sealable allows sealing
// it later (the shared snapshot copy).
func newMemfd(name string, size int64, sealable bool) (*os.File, error) {
	flags := unix.MFD_CLOEXEC
	if sealable {
		flags |= unix.MFD_ALLOW_SEALING
	}
	fd, err := unix.MemfdCreate(name, flags)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size guest memory: %w", err)
	}
	return f, nil
}

// sealFile makes a filled memfd immutable: no write(2), no shared
// writable mapping, no hole punching (a QEMU whose balloon discards
// pages fails instead of zeroing other VMs' memory), no resize, and no
// undoing any of it.
func sealFile(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	if err != nil {
		return fmt.Errorf("seal guest memory: %w", err)
	}
	return nil
}

// pageSize is the granularity at which all-zero guest memory is left
// out of a copy: the guest's own page size.
const pageSize = system.ZeroBlock

// copyData copies the data of in (size bytes) to out at the same
// offsets, leaving holes for in's holes and its all-zero pages, and
// returns how many bytes it wrote. out must read as zeros where nothing
// is written (an empty file or memfd of the right size). Guest memory
// is mostly untouched: a 1 GiB guest with 300 MB in use costs 300 MB.
func copyData(ctx context.Context, in, out *os.File, size int64) (int64, error) {
	var written int64
	err := system.WalkData(ctx, in, size, func(b []byte, off int64) error {
		n, err := system.WriteNonZero(out, b, off)
		written += n
		return err
	})
	if err != nil {
		return written, fmt.Errorf("copy memory: %w", err)
	}
	return written, nil
}

// memKey identifies one snapshot's memory file: the same file (device,
// inode) unchanged (size, modification time).
type memKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

func memKeyOf(fi os.FileInfo) memKey {
	st, _ := fi.Sys().(*syscall.Stat_t)
	k := memKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st != nil {
		k.dev, k.ino = st.Dev, st.Ino
	}
	return k
}

// sharedMem is one snapshot's sealed memory and the VMs mapping it.
type sharedMem struct {
	f *os.File
	// holders are the QEMU processes restored from it. They hold their
	// own descriptors; the driver's is only for the next restore, and
	// it is closed once no holder is left, which frees the memory when
	// the last VM is gone.
	holders map[int]uint64 // pid -> start time
	// pending counts restores that have it but whose QEMU is not yet a
	// holder.
	pending int
}

// sharedRAM caches sealed snapshot memory per memory file.
type sharedRAM struct {
	mu sync.Mutex
	m  map[memKey]*sharedMem
}

// get returns a descriptor of the sealed memfd of the memory file at
// path (size bytes of guest RAM), filling and sealing a new one on first
// use. The caller owns the descriptor and must call hold (its QEMU
// runs) or release (it does not) with the key.
func (s *sharedRAM) get(ctx context.Context, path string, size int64) (*os.File, memKey, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, memKey{}, fmt.Errorf("open snapshot memory: %w", err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return nil, memKey{}, err
	}
	key := memKeyOf(fi)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	if m, ok := s.m[key]; ok {
		return s.dupLocked(m, key)
	}
	f, err := newMemfd("banger-snapshot", size, true)
	if err != nil {
		return nil, key, err
	}
	if _, err := copyData(ctx, src, f, min(size, fi.Size())); err != nil {
		f.Close()
		return nil, key, fmt.Errorf("load snapshot memory: %w", err)
	}
	if err := sealFile(f); err != nil {
		f.Close()
		return nil, key, err
	}
	if s.m == nil {
		s.m = map[memKey]*sharedMem{}
	}
	m := &sharedMem{f: f, holders: map[int]uint64{}}
	s.m[key] = m
	return s.dupLocked(m, key)
}

func (s *sharedRAM) dupLocked(m *sharedMem, key memKey) (*os.File, memKey, error) {
	fd, err := unix.FcntlInt(m.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		s.pruneLocked()
		return nil, key, fmt.Errorf("dup snapshot memory: %w", err)
	}
	m.pending++
	return os.NewFile(uintptr(fd), m.f.Name()), key, nil
}

// hold records p as mapping key's memory.
func (s *sharedRAM) hold(key memKey, p vmm.Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.m[key]; ok {
		m.pending--
		m.holders[p.PID] = p.StartTime
	}
}

// drop forgets p everywhere (it is stopped) and frees what nobody holds.
func (s *sharedRAM) drop(p vmm.Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.m {
		if st, ok := m.holders[p.PID]; ok && st == p.StartTime {
			delete(m.holders, p.PID)
		}
	}
	s.pruneLocked()
}

// release frees key's memory if no VM holds it (a restore that failed
// before its QEMU could hold it).
func (s *sharedRAM) release(key memKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.m[key]; ok {
		m.pending--
	}
	s.pruneLocked()
}

// pruneLocked forgets holders that are gone and closes memory that no
// VM holds any more.
func (s *sharedRAM) pruneLocked() {
	for k, m := range s.m {
		for pid, st := range m.holders {
			if !system.ProcAlive(pid, st) {
				delete(m.holders, pid)
			}
		}
		if len(m.holders) == 0 && m.pending <= 0 {
			m.f.Close()
			delete(s.m, k)
		}
	}
}

// count reports cached snapshots (tests).
func (s *sharedRAM) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// guestRAM is the memfd a QEMU start maps as guest RAM.
type guestRAM struct {
	f       *os.File
	kind    string // ramOwn or ramShared
	private bool   // map share=off
	// shared is the cache entry of a ramShared memfd.
	shared *sharedRAM
	key    memKey
	done   bool
}

// held records p as holding a shared memfd (no-op for own memory).
func (r *guestRAM) held(p vmm.Process) {
	if r.shared != nil && !r.done {
		r.done = true
		r.shared.hold(r.key, p)
	}
}

// abandon gives a shared memfd back when no QEMU came to hold it.
func (r *guestRAM) abandon() {
	if r.shared != nil && !r.done {
		r.done = true
		r.shared.release(r.key)
	}
}

// close closes the driver's descriptor for this start (QEMU has its
// own; a shared memfd stays cached).
func (r *guestRAM) close() {
	if r.f != nil {
		r.f.Close()
	}
}

// guestRAM makes the memfd spec's QEMU maps: a new one for a boot; for
// a restore the snapshot's memory as Restore.Share asks, or an empty
// one when the snapshot's state stream carries the RAM.
func (d *Driver) guestRAM(ctx context.Context, spec vmm.Spec, meta *snapMeta) (guestRAM, error) {
	size := int64(spec.MemoryMiB) << 20
	if meta != nil && meta.RAMInFile && spec.Restore.Share {
		f, key, err := d.shared.get(ctx, filepath.Join(spec.Restore.Dir, fileSnapMem), size)
		if err != nil {
			return guestRAM{}, fmt.Errorf("restore snapshot %s: %w", spec.Restore.Dir, err)
		}
		// Sealed: nobody can write it, so every VM's QEMU may open it
		// (7.2 opens mem-path read-write even for a private mapping).
		return guestRAM{f: f, kind: ramShared, private: true, shared: &d.shared, key: key}, nil
	}
	f, err := newMemfd("banger-ram", size, false)
	if err != nil {
		return guestRAM{}, err
	}
	if spec.UID != 0 {
		// The VM's own memory, for its QEMU user alone.
		if err := handOver(f, spec.UID, spec.GID); err != nil {
			f.Close()
			return guestRAM{}, err
		}
	}
	if meta != nil && meta.RAMInFile {
		src, err := os.Open(filepath.Join(spec.Restore.Dir, fileSnapMem))
		if err != nil {
			f.Close()
			return guestRAM{}, fmt.Errorf("restore snapshot %s: %w", spec.Restore.Dir, err)
		}
		defer src.Close()
		if _, err := copyData(ctx, src, f, min(size, meta.MemBytes)); err != nil {
			f.Close()
			return guestRAM{}, fmt.Errorf("restore snapshot %s: load memory: %w", spec.Restore.Dir, err)
		}
	}
	return guestRAM{f: f, kind: ramOwn}, nil
}

// punchZeroPages turns the all-zero pages of a paused guest's own
// memfd (QEMU's descriptor ramFD) back into holes, so they cost no host
// memory.
func punchZeroPages(ctx context.Context, pid, ramFD int, size int64) error {
	f, err := openGuestRAM(pid, ramFD, os.O_RDWR, size)
	if err != nil {
		return err
	}
	defer f.Close()
	return punchZeros(ctx, f, size)
}

// openGuestRAM opens QEMU's guest memory descriptor ramFD as the
// daemon's user and checks that it is a memfd of size bytes. Reopening
// /proc/<pid>/fd/N gives the daemon's rights to whatever QEMU keeps at
// N: a QEMU its guest took over could have put a read-only shared file
// there (a snapshot layer, the image's rootfs) for the daemon to write.
func openGuestRAM(pid, ramFD, flag int, size int64) (*os.File, error) {
	f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/fd/"+strconv.Itoa(ramFD), flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open guest memory: %w", err)
	}
	// What the daemon now holds, not what QEMU's table says later.
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err == nil && !strings.HasPrefix(target, "/memfd:") {
		err = fmt.Errorf("descriptor %d of qemu %d is %q, not a memfd", ramFD, pid, target)
	}
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil && (!fi.Mode().IsRegular() || fi.Size() != size) {
			err = fmt.Errorf("guest memory descriptor %d is %d bytes, want %d", ramFD, fi.Size(), size)
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open guest memory: %w", err)
	}
	return f, nil
}

// punchZeros punches a hole over every run of all-zero pages in f's
// data regions.
func punchZeros(ctx context.Context, f *os.File, size int64) error {
	runStart, runEnd := int64(-1), int64(-1)
	flush := func() error {
		if runStart < 0 {
			return nil
		}
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, runStart, runEnd-runStart)
		runStart, runEnd = -1, -1
		return err
	}
	err := system.WalkData(ctx, f, size, func(b []byte, off int64) error {
		for i := 0; i < len(b); i += pageSize {
			p := b[i:min(i+pageSize, len(b))]
			at := off + int64(i)
			switch {
			case !system.IsZero(p):
				if err := flush(); err != nil {
					return err
				}
			case runStart >= 0 && runEnd == at:
				runEnd = at + int64(len(p))
			default:
				if err := flush(); err != nil {
					return err
				}
				runStart, runEnd = at, at+int64(len(p))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}
