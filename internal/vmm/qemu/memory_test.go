package qemu

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// copyData writes only non-zero pages: holes and all-zero pages of the
// source stay holes in the copy, which reads back identical.
func TestCopyDataSparse(t *testing.T) {
	size := int64(8 << 20)
	src, err := newMemfd("src", size, false)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	page := bytes.Repeat([]byte{0xab}, pageSize)
	for _, off := range []int64{0, 5 * pageSize, 1<<20 + 3*pageSize, size - pageSize} {
		src.WriteAt(page, off)
	}
	// A touched but all-zero page: data to SEEK_DATA, nothing to copy.
	src.WriteAt(make([]byte, pageSize), 2<<20)
	src.WriteAt([]byte{1}, 3<<20+17) // one byte: its whole page counts
	dst, err := os.Create(filepath.Join(t.TempDir(), "mem"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	dst.Truncate(size)
	n, err := copyData(context.Background(), src, dst, size)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5*pageSize {
		t.Errorf("wrote %d bytes, want %d", n, 5*pageSize)
	}
	var st unix.Stat_t
	unix.Fstat(int(dst.Fd()), &st)
	if st.Blocks*512 > 64*pageSize {
		t.Errorf("copy allocates %d bytes", st.Blocks*512)
	}
	a, b := make([]byte, size), make([]byte, size)
	src.ReadAt(a, 0)
	dst.ReadAt(b, 0)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from source")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := copyData(ctx, src, dst, size); err == nil {
		t.Fatal("cancelled copy succeeded")
	}
}

// A sealed snapshot memfd is shared by its restores, cannot be written
// or have holes punched (a balloon discard must not zero other VMs'
// memory), and is freed once the last VM holding it is stopped.
func TestSharedRAM(t *testing.T) {
	mem := filepath.Join(t.TempDir(), "mem")
	os.WriteFile(mem, append(make([]byte, 3*pageSize), 7), 0o600)
	os.Truncate(mem, 1<<20)
	var s sharedRAM
	f1, k1, err := s.get(context.Background(), mem, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	f2, k2, err := s.get(context.Background(), mem, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	defer f2.Close()
	if k1 != k2 || s.count() != 1 {
		t.Fatalf("two snapshots cached for one file (%d)", s.count())
	}
	var st1, st2 unix.Stat_t
	unix.Fstat(int(f1.Fd()), &st1)
	unix.Fstat(int(f2.Fd()), &st2)
	if st1.Ino != st2.Ino {
		t.Fatal("restores got different memfds")
	}
	b := make([]byte, 1)
	f1.ReadAt(b, 3*pageSize)
	if b[0] != 7 {
		t.Fatalf("memfd content %d", b[0])
	}
	if _, err := f1.WriteAt([]byte{1}, 0); err == nil {
		t.Fatal("sealed memfd writable")
	}
	if err := unix.Fallocate(int(f1.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, pageSize); err == nil {
		t.Fatal("hole punched into sealed memfd")
	}
	if _, err := unix.Mmap(int(f1.Fd()), 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Fatal("shared writable mapping of sealed memfd")
	}
	if m, err := unix.Mmap(int(f1.Fd()), 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE); err != nil {
		t.Fatalf("private mapping refused: %v", err)
	} else {
		unix.Munmap(m)
	}
	// Two "VMs" (this process and its parent stand in: both alive).
	p1, p2 := selfProc(t, os.Getpid()), selfProc(t, os.Getppid())
	s.hold(k1, p1)
	s.hold(k2, p2)
	s.drop(p1)
	if s.count() != 1 {
		t.Fatal("memory freed while a VM holds it")
	}
	s.drop(p2)
	if s.count() != 0 {
		t.Fatal("memory kept after the last VM stopped")
	}
	// A restore that never started gives its reference back.
	_, k3, err := s.get(context.Background(), mem, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	s.release(k3)
	if s.count() != 0 {
		t.Fatal("memory kept after a failed restore")
	}
	// A holder that died without Stop is pruned at the next use.
	_, k4, _ := s.get(context.Background(), mem, 1<<20)
	s.hold(k4, vmm.Process{PID: p1.PID, StartTime: p1.StartTime + 1})
	s.drop(vmm.Process{PID: 1 << 30})
	if s.count() != 0 {
		t.Fatal("dead holder kept memory alive")
	}
}

func selfProc(t *testing.T, pid int) vmm.Process {
	st, err := procStart(pid)
	if err != nil {
		t.Fatal(err)
	}
	return vmm.Process{PID: pid, StartTime: st}
}

var procStart = system.ProcStartTime

// A restore's RAM is what Restore.Share and the snapshot ask for: the
// sealed shared copy mapped private, or an own memfd (a copy of the
// memory file, or empty when the state stream carries RAM).
func TestGuestRAMForRestore(t *testing.T) {
	m := validMeta()
	dir := writeSnap(t, m, []byte("QEVM...."))
	f, _ := os.OpenFile(filepath.Join(dir, fileSnapMem), os.O_WRONLY, 0)
	f.WriteAt([]byte{42}, 5*pageSize)
	f.Close()
	d := &Driver{}
	spec := vmm.Spec{MemoryMiB: m.MemoryMiB, Restore: &vmm.Restore{Dir: dir, Share: true}}
	read := func(r guestRAM) byte {
		b := make([]byte, 1)
		r.f.ReadAt(b, 5*pageSize)
		return b[0]
	}
	shared, err := d.guestRAM(context.Background(), spec, &m)
	if err != nil {
		t.Fatal(err)
	}
	if shared.kind != ramShared || !shared.private || read(shared) != 42 || d.shared.count() != 1 {
		t.Fatalf("shared restore: %+v", shared)
	}
	shared.abandon()
	shared.close()
	if d.shared.count() != 0 {
		t.Fatal("abandoned shared memory kept")
	}
	spec.Restore.Share = false
	own, err := d.guestRAM(context.Background(), spec, &m)
	if err != nil {
		t.Fatal(err)
	}
	if own.kind != ramOwn || own.private || read(own) != 42 {
		t.Fatalf("private restore: %+v", own)
	}
	if _, err := own.f.WriteAt([]byte{1}, 0); err != nil {
		t.Fatalf("own memory not writable: %v", err)
	}
	own.close()
	streamed := m
	streamed.RAMInFile, streamed.MemBytes = false, 0
	spec.Restore.Share = true
	empty, err := d.guestRAM(context.Background(), spec, &streamed)
	if err != nil {
		t.Fatal(err)
	}
	if empty.kind != ramOwn || empty.private || read(empty) != 0 || d.shared.count() != 0 {
		t.Fatalf("stream restore: %+v", empty)
	}
	empty.close()
}

func TestPunchZeros(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 12
	data := make([]byte, size)
	// Pages 3 and 40 hold data; the rest was written as zeros.
	data[3<<12+7] = 1
	data[40<<12] = 2
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := punchZeros(context.Background(), f, size); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("content changed")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 8<<12 {
		t.Errorf("%d bytes allocated after the punch, want about 2 pages", st.Blocks*512)
	}
}
