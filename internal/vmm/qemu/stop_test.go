package qemu

import (
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
	"time"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// fakeQMP is a QMP server on dir/qmp.sock that records the commands it
// gets and runs obey for each (the "VMM" reacting, or not).
type fakeQMP struct {
	mu   sync.Mutex
	cmds []string
	ln   net.Listener
}

func startFakeQMP(t *testing.T, dir string, obey func(cmd string)) *fakeQMP {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, paths.FileQMPSocket))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeQMP{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\r\n"))
				// QMP is a JSON stream, not lines: go-qemu sends commands
				// without a newline, as QEMU allows.
				dec := json.NewDecoder(c)
				for {
					var req struct {
						Execute string `json:"execute"`
					}
					if dec.Decode(&req) != nil {
						return
					}
					c.Write([]byte(`{"return": {}}` + "\r\n"))
					if req.Execute == "qmp_capabilities" {
						continue
					}
					f.mu.Lock()
					f.cmds = append(f.cmds, req.Execute)
					f.mu.Unlock()
					obey(req.Execute)
				}
			}(c)
		}
	}()
	return f
}

func (f *fakeQMP) got() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.cmds, ",")
}

// fakeVMM is a real process standing in for QEMU: a sleep that is reaped
// as soon as it exits, so Alive sees it go.
func fakeVMM(t *testing.T) (vmm.Process, func()) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	go cmd.Wait()
	t.Cleanup(func() { cmd.Process.Kill() })
	st, err := system.ProcStartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return vmm.Process{PID: cmd.Process.Pid, StartTime: st}, func() { cmd.Process.Signal(syscall.SIGTERM) }
}

// TestStopFallsBack: a normal stop asks for an ACPI power-down first;
// when the guest ignores it within the timeout, QMP quit; when QEMU
// ignores that too (or QMP is gone), SIGKILL. Each step is taken only when
// the one before did not end the process.
func TestStopFallsBack(t *testing.T) {
	cases := []struct {
		name    string
		force   bool
		qmp     bool
		exitsOn string // the QMP command the fake VMM exits on, "" for none
		want    string // QMP commands seen
	}{
		{name: "guest powers off on ACPI", qmp: true, exitsOn: "system_powerdown", want: "system_powerdown"},
		{name: "guest ignores ACPI, QEMU quits", qmp: true, exitsOn: "quit", want: "system_powerdown,quit"},
		{name: "both ignored: killed", qmp: true, want: "system_powerdown,quit"},
		{name: "QMP gone: killed", qmp: false},
		{name: "forced skips ACPI", force: true, qmp: true, exitsOn: "quit", want: "quit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "qs") // short: a socket path
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			p, exit := fakeVMM(t)
			var q *fakeQMP
			if tc.qmp {
				q = startFakeQMP(t, dir, func(cmd string) {
					if cmd == tc.exitsOn {
						exit()
					}
				})
			}
			d := &Driver{}
			t0 := time.Now()
			if err := d.Stop(context.Background(), dir, p, tc.force, 500*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			took := time.Since(t0)
			if d.Alive(p) {
				t.Fatal("process alive after Stop")
			}
			if q != nil {
				if got := q.got(); got != tc.want {
					t.Fatalf("QMP commands = %q, want %q", got, tc.want)
				}
			}
			// Only the fallback path waits out quit's grace period.
			if tc.exitsOn != "" && took > 2*time.Second {
				t.Fatalf("stop took %s though the VMM exited on %s", took, tc.exitsOn)
			}
		})
	}
}

// A QMP socket that accepts but never answers (a wedged QEMU) costs one
// bounded wait, not a hang.
func TestQMPSilentSocketTimesOut(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never written to
		}
	}()
	old := qmpTimeout
	qmpTimeout = 300 * time.Millisecond
	defer func() { qmpTimeout = old }()
	start := time.Now()
	err = qmpRun(sock, `{"execute":"quit"}`)
	if err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %s", d)
	}
}
