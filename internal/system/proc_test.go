package system

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func statLine(comm, state string, start string) string {
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice threads
	// itrealvalue starttime vsize ...
	return "1234 (" + comm + ") " + state + " 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 " + start + " 12345678 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name      string
		line      string
		wantState byte
		wantStart uint64
		wantErr   bool
	}{
		{name: "plain", line: statLine("qemu-system-x86", "S", "98765"), wantState: 'S', wantStart: 98765},
		{name: "spaces in comm", line: statLine("my proc", "R", "1"), wantState: 'R', wantStart: 1},
		{name: "parens in comm", line: statLine("a) b (c", "Z", "42"), wantState: 'Z', wantStart: 42},
		{name: "comm is close paren", line: statLine(")", "S", "7"), wantState: 'S', wantStart: 7},
		{name: "comm looks like fields", line: statLine("x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "S", "99"), wantState: 'S', wantStart: 99},
		{name: "max start", line: statLine("a", "S", "18446744073709551615"), wantState: 'S', wantStart: 1<<64 - 1},
		{name: "empty", line: "", wantErr: true},
		{name: "no parens", line: "1234 qemu S 1 2 3", wantErr: true},
		{name: "truncated", line: "1234 (qemu) S 1 1234 1234 0 -1", wantErr: true},
		{name: "bad start", line: statLine("a", "S", "12x"), wantErr: true},
		{name: "negative start", line: statLine("a", "S", "-1"), wantErr: true},
		{name: "long state", line: statLine("a", "SS", "1"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseProcStat([]byte(tt.line))
			if tt.wantErr {
				if !errors.Is(err, ErrBadProcStat) {
					t.Fatalf("err = %v, want ErrBadProcStat", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.state != tt.wantState || st.startTime != tt.wantStart {
				t.Fatalf("got state %q start %d, want %q %d", st.state, st.startTime, tt.wantState, tt.wantStart)
			}
		})
	}
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte(statLine("qemu", "S", "5")))
	f.Add([]byte(statLine("a) (b", "Z", "0")))
	f.Add([]byte("1 () S"))
	f.Add([]byte(")("))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseProcStat(b)
		if err != nil {
			return
		}
		// Whatever parsed must come from after the last ')'.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		if strings.IndexByte(rest, st.state) < 0 {
			t.Fatalf("state %q not in %q", st.state, rest)
		}
	})
}

func TestProcSelf(t *testing.T) {
	pid := os.Getpid()
	start, err := ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if start == 0 {
		t.Fatal("start time is 0")
	}
	if !ProcAlive(pid, start) {
		t.Error("ProcAlive(self) = false")
	}
	if ProcAlive(pid, start+1) {
		t.Error("ProcAlive with a different start time = true; a recycled pid would be adopted")
	}
	if ProcAlive(0, 0) || ProcAlive(-1, 0) {
		t.Error("ProcAlive accepted a non-positive pid")
	}
	if _, err := ProcStartTime(1 << 30); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ProcStartTime(missing) err = %v, want ErrNotExist", err)
	}
}

func TestProcAliveZombie(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	start, err := ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Not waited for, the child stays a zombie once it exits.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := readProcStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.state == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never became a zombie (state %q)", st.state)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ProcAlive(pid, start) {
		t.Error("ProcAlive(zombie) = true")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if ProcAlive(pid, start) {
		t.Error("ProcAlive(reaped) = true")
	}
}

func TestBootID(t *testing.T) {
	id, err := BootID()
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 36 || strings.Count(id, "-") != 4 {
		t.Fatalf("boot id %q does not look like a uuid", id)
	}

	old := procRoot
	t.Cleanup(func() { procRoot = old })
	procRoot = t.TempDir()
	if err := os.MkdirAll(filepath.Join(procRoot, "sys/kernel/random"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(procRoot, "sys/kernel/random/boot_id"), []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := BootID(); err == nil {
		t.Fatal("empty boot id accepted")
	}
}

// A multi-threaded process whose main thread exited first shows a zombie
// leader while its other threads still run and hold its files (QEMU's
// disk locks: a derive once flattened the disk while they were held).
// It is alive until no thread is left running.
func TestProcAliveZombieLeaderWithRunningThread(t *testing.T) {
	old := procRoot
	t.Cleanup(func() { procRoot = old })
	procRoot = t.TempDir()
	write := func(rel, line string) {
		t.Helper()
		p := filepath.Join(procRoot, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1234/stat", statLine("qemu", "Z", "77"))
	write("1234/task/1234/stat", statLine("qemu", "Z", "77"))
	write("1234/task/1240/stat", statLine("qemu", "D", "78"))
	if !ProcAlive(1234, 77) {
		t.Fatal("zombie leader with a running thread reported dead")
	}
	if ProcAlive(1234, 76) {
		t.Fatal("other start time reported alive")
	}
	write("1234/task/1240/stat", statLine("qemu", "X", "78"))
	if ProcAlive(1234, 77) {
		t.Fatal("zombie leader with only dead threads reported alive")
	}
}
