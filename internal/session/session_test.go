package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/mux"
)

func TestPipeSession(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{
		Name: "echo",
		Argv: sh(`echo out; echo err >&2; read line; echo "got $line $FOO"; exit 3`),
		Env:  map[string]string{"FOO": "secret-value"},
	})
	if s.State != api.SessionRunning || s.Name != "echo" || s.PID == 0 || s.SupervisorPID == 0 || s.Mode != api.SessionModePipe {
		t.Fatalf("started session %+v", s)
	}
	if strings.Join(s.EnvKeys, ",") != "FOO" || s.Command != "sh" || s.BootID != "boot-1" {
		t.Fatalf("metadata %+v", s)
	}
	r := runAttach(t, m, "echo", api.AttachSessionRequest{FromStart: true, Stdin: true}, strings.NewReader("hello\n"))
	if r.stdout != "out\ngot hello secret-value\n" || r.stderr != "err\n" || r.st.Code != 3 {
		t.Fatalf("attach: %+v", r)
	}
	s = waitState(t, m, s.ID, api.SessionExited)
	if s.Exit == nil || s.Exit.Code != 3 || s.EndedAt == nil {
		t.Fatalf("ended session %+v", s)
	}
	// Values never reach the disk.
	b, err := os.ReadFile(filepath.Join(m.opts.Dir, s.ID, metaFile))
	if err != nil || bytes.Contains(b, []byte("secret-value")) {
		t.Fatalf("meta.json %s (%v)", b, err)
	}
	// An ended session replays from its logs, also once its supervisor
	// is gone.
	for lockHeld(filepath.Join(m.opts.Dir, s.ID)) {
		time.Sleep(10 * time.Millisecond)
	}
	r = runAttach(t, m, s.ID, api.AttachSessionRequest{FromStart: true}, nil)
	if r.stdout != "out\ngot hello secret-value\n" || r.stderr != "err\n" || r.st.Code != 3 {
		t.Fatalf("replay after exit: %+v", r)
	}
	var logs bytes.Buffer
	if err := m.Logs(ctxT(t, 5*time.Second), "echo", api.SessionLogsRequest{Stream: "stderr"}, &logs); err != nil || logs.String() != "err\n" {
		t.Fatalf("logs %q %v", logs.String(), err)
	}
	if err := m.Remove(ctxT(t, time.Second), "echo"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(context.Background(), "echo"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}
}

func TestReplayAndTail(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{Argv: sh(`for i in 1 2 3 4 5; do echo line$i; done; echo e1 >&2; echo e2 >&2; exec sleep 30`)})
	w := watch(t, m, s.ID, api.AttachSessionRequest{FromStart: true})
	w.waitFor(t, "all output", func(o, e string, _ *api.ExitStatus) bool { return strings.Count(o, "\n") == 5 && e == "e1\ne2\n" })
	w.conn.Close() // detach

	tail := watch(t, m, s.ID, api.AttachSessionRequest{Tail: 2})
	tail.waitFor(t, "tail", func(o, e string, _ *api.ExitStatus) bool { return o == "line4\nline5\n" && e == "e1\ne2\n" })
	// Nothing more arrives: the tail is exactly two lines.
	time.Sleep(50 * time.Millisecond)
	if o, _ := tail.output(); o != "line4\nline5\n" {
		t.Fatalf("tail %q", o)
	}
	// Live-only attach sees nothing old.
	live := watch(t, m, s.ID, api.AttachSessionRequest{})
	time.Sleep(50 * time.Millisecond)
	if o, e := live.output(); o != "" || e != "" {
		t.Fatalf("live attach replayed %q %q", o, e)
	}
	var logs bytes.Buffer
	if err := m.Logs(ctxT(t, 5*time.Second), s.ID, api.SessionLogsRequest{Tail: 1}, &logs); err != nil || logs.String() != "line5\n" {
		t.Fatalf("logs tail %q %v", logs.String(), err)
	}
	s2, err := m.Stop(ctxT(t, 5*time.Second), s.ID, time.Second)
	if err != nil || s2.State != api.SessionExited || s2.Exit.Signal != int(syscall.SIGTERM) {
		t.Fatalf("stop: %+v %v", s2, err)
	}
	for _, w := range []*watcher{tail, live} {
		if st := w.waitExit(t); st.Signal != int(syscall.SIGTERM) {
			t.Fatalf("attacher exit %+v", st)
		}
	}
}

func TestAttachersAndStdinWriter(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{Name: "cat", Argv: []string{"cat"}})
	writer := watch(t, m, "cat", api.AttachSessionRequest{Stdin: true})
	reader := watch(t, m, "cat", api.AttachSessionRequest{})

	_, err := m.Attach(ctxT(t, 5*time.Second), "cat", api.AttachSessionRequest{Stdin: true})
	var ae *api.Error
	if !errors.Is(err, ErrBusy) || !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Hint, "--steal-stdin") {
		t.Fatalf("second writer: %v", err)
	}

	writer.w.Stream(mux.Stdin).Write([]byte("one\n"))
	writer.waitStdout(t, "one\n")
	reader.waitStdout(t, "one\n")
	// A reader's stdin goes nowhere.
	reader.w.Stream(mux.Stdin).Write([]byte("ignored\n"))
	reader.w.WriteStdinClose()

	thief := watch(t, m, "cat", api.AttachSessionRequest{Stdin: true, StealStdin: true})
	writer.w.Stream(mux.Stdin).Write([]byte("stolen\n"))
	time.Sleep(50 * time.Millisecond)
	thief.w.Stream(mux.Stdin).Write([]byte("two\n"))
	reader.waitStdout(t, "two\n")
	thief.w.WriteStdinClose()
	for _, w := range []*watcher{writer, reader, thief} {
		if st := w.waitExit(t); st.Code != 0 {
			t.Fatalf("exit %+v", st)
		}
	}
	if o, _ := reader.output(); o != "one\ntwo\n" {
		t.Fatalf("reader saw %q", o)
	}
	if o, _ := thief.output(); o != "two\n" {
		t.Fatalf("thief saw %q", o)
	}
	waitState(t, m, s.ID, api.SessionExited)
}

func TestStopEscalatesToKill(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	// Ignored signals stay ignored across exec: sleep ignores TERM too.
	s := start(t, m, api.StartSessionRequest{Argv: sh(`trap "" TERM; echo ready; while :; do sleep 0.05; done`)})
	w := watch(t, m, s.ID, api.AttachSessionRequest{FromStart: true})
	w.waitStdout(t, "ready")
	t0 := time.Now()
	s, err := m.Stop(ctxT(t, 5*time.Second), s.ID, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != api.SessionExited || s.Exit == nil || s.Exit.Signal != int(syscall.SIGKILL) || s.Exit.Code != 137 {
		t.Fatalf("stopped session %+v", s)
	}
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Fatalf("killed after %s, before the timeout", d)
	}
	if st := w.waitExit(t); st.Signal != int(syscall.SIGKILL) {
		t.Fatalf("attacher exit %+v", st)
	}
	// Stopping an ended session is a no-op.
	if s2, err := m.Stop(ctxT(t, time.Second), s.ID, 0); err != nil || s2.State != api.SessionExited {
		t.Fatalf("second stop %+v %v", s2, err)
	}
	if err := m.Signal(ctxT(t, time.Second), s.ID, 15); err == nil {
		t.Fatal("signal to an ended session succeeded")
	}
}

func TestSignal(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{Argv: sh(`trap 'echo usr1; exit 7' USR1; echo ready; while :; do sleep 0.05; done`)})
	w := watch(t, m, s.ID, api.AttachSessionRequest{FromStart: true})
	w.waitStdout(t, "ready")
	if err := m.Signal(ctxT(t, 5*time.Second), s.ID, int(syscall.SIGUSR1)); err != nil {
		t.Fatal(err)
	}
	if st := w.waitExit(t); st.Code != 7 {
		t.Fatalf("exit %+v", st)
	}
	w.waitStdout(t, "usr1\n")

	// A signal frame from an attacher works too.
	s = start(t, m, api.StartSessionRequest{Argv: []string{"sleep", "30"}})
	w = watch(t, m, s.ID, api.AttachSessionRequest{})
	w.w.WriteSignal(int(syscall.SIGINT))
	if st := w.waitExit(t); st.Signal != int(syscall.SIGINT) || st.Code != 130 {
		t.Fatalf("exit %+v", st)
	}
}

func TestPreflight(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	start(t, m, api.StartSessionRequest{Name: "taken", Argv: []string{"sleep", "30"}})
	tests := []struct {
		name string
		req  api.StartSessionRequest
		code string
		msg  string
	}{
		{"missing cwd", api.StartSessionRequest{Argv: []string{"true"}, Cwd: "/nonexistent/dir"}, api.CodeInvalid, "working directory /nonexistent/dir does not exist"},
		{"cwd is a file", api.StartSessionRequest{Argv: []string{"true"}, Cwd: file}, api.CodeInvalid, "is not a directory"},
		{"relative cwd", api.StartSessionRequest{Argv: []string{"true"}, Cwd: "tmp"}, api.CodeInvalid, "not absolute"},
		{"missing command", api.StartSessionRequest{Argv: []string{"no-such-command-xyz"}}, api.CodeInvalid, `command "no-such-command-xyz": not found on PATH`},
		{"not executable", api.StartSessionRequest{Argv: []string{file}}, api.CodeInvalid, "is not executable"},
		{"command not on session PATH", api.StartSessionRequest{Argv: []string{"sleep"}, Env: map[string]string{"PATH": "/nonexistent"}}, api.CodeInvalid, "PATH=/nonexistent"},
		{"name taken", api.StartSessionRequest{Name: "taken", Argv: []string{"true"}}, api.CodeConflict, `a session named "taken" is already running`},
		{"bad name", api.StartSessionRequest{Name: "../etc", Argv: []string{"true"}}, api.CodeInvalid, "invalid session name"},
		{"empty", api.StartSessionRequest{}, api.CodeInvalid, "empty command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Start(ctxT(t, 5*time.Second), tt.req)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != tt.code || !strings.Contains(ae.Message, tt.msg) {
				t.Fatalf("error %v, want %s %q", err, tt.code, tt.msg)
			}
		})
	}
	ents, _ := os.ReadDir(m.opts.Dir)
	n := 0
	for _, e := range ents {
		if e.IsDir() {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d session directories after failed preflights, want 1", n)
	}
}

func TestFailedLaunch(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{Argv: sh(`echo "boom: bad config" >&2; echo second >&2; exit 2`)})
	if s.State != api.SessionFailed || s.Exit == nil || s.Exit.Code != 2 || s.StderrHead != "boom: bad config\nsecond\n" || !strings.Contains(s.Error, "exited with status 2") {
		t.Fatalf("failed session %+v", s)
	}
	// The file is executable but no program: execve fails.
	garbage := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(garbage, []byte("\x00\x01\x02\x03not a program"), 0o755)
	s = start(t, m, api.StartSessionRequest{Argv: []string{garbage}})
	if s.State != api.SessionFailed || s.Exit == nil || s.Exit.Code != 126 || !strings.Contains(s.Error, "exec format error") {
		t.Fatalf("failed exec %+v", s)
	}
	r := runAttach(t, m, s.ID, api.AttachSessionRequest{FromStart: true}, nil)
	if r.st.Code != 126 {
		t.Fatalf("attach to a failed session: %+v", r)
	}
	// A quick success is not a failure.
	s = start(t, m, api.StartSessionRequest{Argv: []string{"true"}})
	if s.State != api.SessionExited || s.Exit.Code != 0 {
		t.Fatalf("quick success %+v", s)
	}
}

func TestPTYSession(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{PTY: true, Rows: 30, Cols: 100, Argv: sh(`stty size; tty >/dev/null && echo tty:$TERM; read x; stty size; echo got:$x; exit 5`)})
	if s.Mode != api.SessionModePTY {
		t.Fatalf("mode %q", s.Mode)
	}
	w := watch(t, m, s.ID, api.AttachSessionRequest{FromStart: true, Stdin: true, Rows: 40, Cols: 120})
	w.waitStdout(t, "tty:xterm-256color")
	o, _ := w.output()
	if !strings.HasPrefix(o, "30 100\r\n") {
		t.Fatalf("initial size: %q", o)
	}
	w.w.Stream(mux.Stdin).Write([]byte("hi\n"))
	if st := w.waitExit(t); st.Code != 5 {
		t.Fatalf("exit %+v", st)
	}
	o, e := w.output()
	if !strings.Contains(o, "40 120\r\ngot:hi\r\n") || e != "" {
		t.Fatalf("output %q stderr %q", o, e)
	}
	if err := m.Logs(ctxT(t, time.Second), s.ID, api.SessionLogsRequest{Stream: "stderr"}, io.Discard); err == nil {
		t.Fatal("stderr logs of a PTY session")
	}
}

func TestAgentRestart(t *testing.T) {
	t.Parallel()
	m1 := newManager(t)
	s := start(t, m1, api.StartSessionRequest{Name: "svc", Argv: []string{"cat"}})
	w := watch(t, m1, "svc", api.AttachSessionRequest{Stdin: true})
	w.w.Stream(mux.Stdin).Write([]byte("before\n"))
	w.waitStdout(t, "before\n")
	w.conn.Close()

	// A new Manager (a restarted agent) knows nothing but the directory.
	m2 := NewManager(m1.opts)
	ss, err := m2.List(context.Background())
	if err != nil || len(ss) != 1 || ss[0].ID != s.ID || ss[0].State != api.SessionRunning {
		t.Fatalf("list after restart: %+v %v", ss, err)
	}
	r := runAttach(t, m2, "svc", api.AttachSessionRequest{FromStart: true, Stdin: true}, strings.NewReader("after\n"))
	if r.stdout != "before\nafter\n" || r.st.Code != 0 {
		t.Fatalf("attach after restart: %+v", r)
	}
}

func TestSupervisorKilledIsLost(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{Name: "doomed", Argv: []string{"sleep", "30"}})
	syscall.Kill(s.SupervisorPID, syscall.SIGKILL)
	t.Cleanup(func() { syscall.Kill(-s.PID, syscall.SIGKILL) })
	s = waitState(t, m, s.ID, api.SessionLost)
	if !strings.Contains(s.Error, "supervisor is gone") {
		t.Fatalf("lost session %+v", s)
	}
	// The name is free again.
	start(t, m, api.StartSessionRequest{Name: s.Name, Argv: []string{"true"}})
}

// TestBackpressure: with logs far smaller than the output, an attacher
// that keeps reading still gets every byte (the command was slowed, not
// its output dropped), while one that stops reading is disconnected
// after the stall timeout instead of blocking the session forever.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	limits := testLimits
	limits.LogBytes = 64 << 10
	limits.StallTimeout = 300 * time.Millisecond
	m := newManagerLimits(t, limits)
	const total = 8 << 20
	s := start(t, m, api.StartSessionRequest{Argv: sh(`read go; head -c 8388608 /dev/zero`)})

	stuck, err := m.Attach(ctxT(t, 5*time.Second), s.ID, api.AttachSessionRequest{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	reader, err := m.Attach(ctxT(t, 5*time.Second), s.ID, api.AttachSessionRequest{FromStart: true, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	w := mux.NewWriter(reader)
	w.Stream(mux.Stdin).Write([]byte("go\n"))
	r := mux.NewReader(reader)
	n := 0
	var st api.ExitStatus
	for {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
		if f.Type == mux.Exit {
			st, _ = mux.DecodeExit(f.Payload)
			break
		}
		n += len(f.Payload)
		if n < total/4 {
			// Slow at first, so the logs rotate under the reader.
			time.Sleep(time.Millisecond)
		}
	}
	if n != total || st.Code != 0 {
		t.Fatalf("reader got %d bytes of %d, exit %+v", n, total, st)
	}
	// The stuck attacher was cut loose: its stream ends without an exit.
	stuck.SetReadDeadline(time.Now().Add(5 * time.Second))
	sr := mux.NewReader(stuck)
	for {
		f, err := sr.ReadFrame()
		if err != nil {
			break
		}
		if f.Type == mux.Exit {
			t.Fatal("stuck attacher got to the exit frame")
		}
	}
	for _, name := range []string{stdoutLog, stdoutLog + rotatedSuffix} {
		st, err := os.Stat(filepath.Join(m.opts.Dir, s.ID, name))
		if err != nil || st.Size() > limits.LogBytes+pumpBuffer {
			t.Fatalf("%s: %v %v", name, st.Size(), err)
		}
	}
}

func TestTailFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if got := tailFile(filepath.Join(dir, "missing"), 10); got != "(no supervisor log)" {
		t.Errorf("missing: %q", got)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n \n"), 0o600)
	if got := tailFile(empty, 10); got != "(supervisor log is empty)" {
		t.Errorf("empty: %q", got)
	}
	log := filepath.Join(dir, "log")
	os.WriteFile(log, []byte("first line\nlast words\n"), 0o600)
	if got := tailFile(log, 11); got != "last words" {
		t.Errorf("tail: %q", got)
	}
}

// TestSessionIDInEnv: every session's command carries its own id in
// BANGER_SESSION (the egress log attributes connections by it), and a
// request cannot set another.
func TestSessionIDInEnv(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	s := start(t, m, api.StartSessionRequest{
		Argv: sh(`echo "id=$` + agentapi.SessionEnv + `"`),
		Env:  map[string]string{agentapi.SessionEnv: "forged"},
	})
	r := runAttach(t, m, s.ID, api.AttachSessionRequest{FromStart: true}, nil)
	if r.stdout != "id="+s.ID+"\n" {
		t.Fatalf("stdout %q, want id=%s", r.stdout, s.ID)
	}
}
