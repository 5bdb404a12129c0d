package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// migrationQMP is a QMP server that plays QEMU's part of a save: it
// takes the state file's descriptor (getfd, SCM_RIGHTS), writes a
// migration stream into it on "migrate", reports the migration done,
// and ends the VMM process on "quit".
type migrationQMP struct {
	mu    sync.Mutex
	cmds  []string
	args  []string
	fail  string // a command answered with an error
	onCmd func(cmd string)
	// flood makes "migrate" write this many bytes of state, as a
	// compromised QEMU would, until floodAlive says the VMM is gone.
	flood      int64
	floodAlive func() bool
}

func (q *migrationQMP) serve(t *testing.T, dir string) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, paths.FileQMPSocket), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go q.conn(c)
		}
	}()
}

func (q *migrationQMP) conn(c *net.UnixConn) {
	defer c.Close()
	c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}` + "\r\n"))
	var fd *os.File
	buf := make([]byte, 64<<10)
	oob := make([]byte, 1024)
	var pending []byte
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if oobn > 0 {
			msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				if fds, err := syscall.ParseUnixRights(&m); err == nil && len(fds) > 0 {
					fd = os.NewFile(uintptr(fds[0]), "passed")
				}
			}
		}
		pending = append(pending, buf[:n]...)
		dec := json.NewDecoder(bytes.NewReader(pending))
		for {
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
			}
			if dec.Decode(&req) != nil {
				break
			}
			pending = pending[dec.InputOffset():]
			dec = json.NewDecoder(bytes.NewReader(pending))
			q.mu.Lock()
			if req.Execute != "qmp_capabilities" {
				q.cmds = append(q.cmds, req.Execute)
				q.args = append(q.args, string(req.Arguments))
			}
			failing := req.Execute == q.fail
			q.mu.Unlock()
			reply := `{"return": {}}`
			switch {
			case failing:
				reply = `{"error": {"class": "GenericError", "desc": "injected failure"}}`
			case req.Execute == "getfd" && fd == nil:
				reply = `{"error": {"class": "GenericError", "desc": "no file descriptor supplied via SCM_RIGHTS"}}`
			case req.Execute == "migrate" && q.flood > 0:
				chunk := make([]byte, 1<<20)
				for n := int64(0); n < q.flood && q.floodAlive(); n += int64(len(chunk)) {
					if _, err := fd.Write(chunk); err != nil {
						break
					}
				}
				fd.Close()
			case req.Execute == "migrate":
				fd.Write([]byte("QEVM\x00\x00\x00\x03device-state"))
				fd.Close()
			case req.Execute == "query-migrate":
				reply = `{"return": {"status": "completed"}}`
			}
			if q.onCmd != nil {
				q.onCmd(req.Execute)
			}
			c.Write([]byte(reply + "\r\n"))
		}
	}
}

func (q *migrationQMP) got() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return strings.Join(q.cmds, ",")
}

// fakeQEMU is a process holding guest RAM as fd 3, as QEMU holds its
// memfd, so Save reads it through /proc/<pid>/fd/3.
func fakeQEMU(t *testing.T, ram *os.File) (vmm.Process, func()) {
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = []*os.File{ram}
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep: %v", err)
	}
	go cmd.Wait()
	t.Cleanup(func() { cmd.Process.Kill() })
	st, err := system.ProcStartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	state := procState{RAM: ramOwn, RAMFD: 3, Kernel: "/i/vmlinuz", Cmdline: "console=ttyS0", MemoryMiB: 16, CPUs: 1, Accel: "tcg"}
	return vmm.Process{PID: cmd.Process.Pid, StartTime: st, State: state.encode()}, func() { cmd.Process.Kill() }
}

// Save pauses the guest, streams device state (not RAM: x-ignore-shared)
// into a descriptor QEMU gets over SCM_RIGHTS (no exec: under
// spawn=deny), copies RAM sparsely from QEMU's memfd, writes metadata
// that CheckSnapshot accepts, and ends the VMM.
func TestSave(t *testing.T) {
	dir, _ := os.MkdirTemp("", "qsv")
	defer os.RemoveAll(dir)
	ram, err := newMemfd("ram", 16<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	ram.WriteAt(bytes.Repeat([]byte{9}, 3*pageSize), 1<<20)
	p, kill := fakeQEMU(t, ram)
	ram.Close()
	q := &migrationQMP{onCmd: func(cmd string) {
		if cmd == "quit" {
			kill()
		}
	}}
	q.serve(t, dir)
	dst := t.TempDir()
	d := &Driver{Binary: writeFakeVersion(t)}
	saved, err := d.Save(context.Background(), dir, p, dst)
	if err != nil {
		t.Fatal(err)
	}
	if d.Alive(p) {
		t.Fatal("VMM alive after save")
	}
	if got := q.got(); got != "stop,migrate-set-capabilities,migrate-set-parameters,getfd,migrate,query-migrate,quit" {
		t.Fatalf("QMP commands %s", got)
	}
	if !strings.Contains(q.args[1], `{"capability":"x-ignore-shared","state":true}`) || q.args[4] != `{"uri":"fd:snapstate"}` {
		t.Fatalf("QMP args %q", q.args)
	}
	if saved.MemoryBytes != 3*pageSize || saved.Bytes <= 0 {
		t.Fatalf("saved %+v", saved)
	}
	if err := d.CheckSnapshot(dst); err != nil {
		t.Fatal(err)
	}
	m, err := readSnapshot(dst)
	if err != nil || !m.RAMInFile || m.MemoryMiB != 16 || m.Compat != "qemu 7.2.22; accel tcg; cpu max" || m.Cmdline != "console=ttyS0" {
		t.Fatalf("meta %+v %v", m, err)
	}
	for _, f := range []string{fileSnapMeta, fileSnapState, fileSnapMem} {
		if fi, err := os.Stat(filepath.Join(dst, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
}

// A save that fails midway still ends the VMM: its guest is paused in
// an unknown state.
func TestSaveFailureEndsVMM(t *testing.T) {
	dir, _ := os.MkdirTemp("", "qsf")
	defer os.RemoveAll(dir)
	ram, _ := newMemfd("ram", 16<<20, false)
	p, _ := fakeQEMU(t, ram)
	ram.Close()
	q := &migrationQMP{fail: "migrate"}
	q.serve(t, dir)
	d := &Driver{Binary: writeFakeVersion(t)}
	_, err := d.Save(context.Background(), dir, p, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("err = %v", err)
	}
	if d.Alive(p) {
		t.Fatal("VMM alive after a failed save")
	}
	// A VM started without a memfd cannot be saved.
	if _, err := d.Save(context.Background(), dir, vmm.Process{PID: 1}, t.TempDir()); err == nil || !strings.Contains(err.Error(), "restart it") {
		t.Fatalf("old VM: %v", err)
	}
}

func writeFakeVersion(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "qemu")
	os.WriteFile(bin, []byte("#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian)'\n"), 0o755)
	return bin
}

// A compromised QEMU that writes state without end is stopped once the
// state file is larger than any save of its memory can be: it cannot
// fill the host's disk.
func TestSaveStateFlood(t *testing.T) {
	old := stateSlack
	stateSlack = 0
	defer func() { stateSlack = old }()
	dir, _ := os.MkdirTemp("", "qfl")
	defer os.RemoveAll(dir)
	ram, _ := newMemfd("ram", 16<<20, false)
	p, _ := fakeQEMU(t, ram)
	ram.Close()
	d := &Driver{Binary: writeFakeVersion(t)}
	q := &migrationQMP{flood: 1 << 30, floodAlive: func() bool { return d.Alive(p) }}
	q.serve(t, dir)
	dst := t.TempDir()
	_, err := d.Save(context.Background(), dir, p, dst)
	if err == nil || !strings.Contains(err.Error(), "state") {
		t.Fatalf("save of a flooding QEMU: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dst, fileSnapState))
	if err == nil && fi.Size() > 256<<20 {
		t.Fatalf("state file grew to %d bytes", fi.Size())
	}
	if d.Alive(p) {
		t.Fatal("flooding VMM alive after save")
	}
}

// Save and a restore's zero-page pass open QEMU's RAM descriptor as the
// daemon's user. A QEMU taken over by its guest could have put another
// file at that number (a shared layer it holds read-only): the daemon
// must use guest memory only, a memfd of the guest's size.
func TestSaveRefusesRAMThatIsNotAMemfd(t *testing.T) {
	dir, _ := os.MkdirTemp("", "qnm")
	defer os.RemoveAll(dir)
	layer, err := os.CreateTemp(t.TempDir(), "layer")
	if err != nil {
		t.Fatal(err)
	}
	layer.Truncate(16 << 20)
	p, kill := fakeQEMU(t, layer)
	layer.Close()
	q := &migrationQMP{onCmd: func(cmd string) {
		if cmd == "quit" {
			kill()
		}
	}}
	q.serve(t, dir)
	d := &Driver{Binary: writeFakeVersion(t)}
	if _, err := d.Save(context.Background(), dir, p, t.TempDir()); err == nil || !strings.Contains(err.Error(), "memfd") {
		t.Fatalf("save of a regular file as guest memory: %v", err)
	}
	if err := punchZeroPages(context.Background(), p.PID, 3, 16<<20); err == nil {
		t.Fatal("zero pages punched in a file that is not guest memory")
	}
}
