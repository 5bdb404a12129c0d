package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/client"
)

// syncBuf is a bytes.Buffer that a reader goroutine fills while the test
// looks at it.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cliProc is the real CLI running in the background with piped stdio, as
// an orchestrator program would drive it.
type cliProc struct {
	args           []string
	cmd            *exec.Cmd
	stdin          io.WriteCloser
	stdout, stderr *syncBuf
	done           chan struct{}
	code           int
}

func (in *instance) startCLI(t testing.TB, args ...string) *cliProc {
	t.Helper()
	p := &cliProc{args: args, stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan struct{})}
	p.cmd = exec.Command(bangerBin, args...)
	p.cmd.Env = in.env()
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *cliProc) String() string {
	return fmt.Sprintf("banger %s\nstdout: %q\nstderr: %q", strings.Join(p.args, " "), p.stdout.String(), p.stderr.String())
}

// waitStdout waits until stdout contains want.
func (p *cliProc) waitStdout(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.stdout.String(), want) {
		select {
		case <-p.done:
			if strings.Contains(p.stdout.String(), want) {
				return
			}
			t.Fatalf("exited %d before printing %q: %s", p.code, want, p)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %s: %s", want, timeout, p)
		}
	}
}

// wait returns the exit code.
func (p *cliProc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("still running after %s: %s", timeout, p)
		return 0
	}
}

func (in *instance) session(t testing.TB, vm, ref string) api.Session {
	t.Helper()
	var s api.Session
	r := in.must(t, "vm", "session", "show", vm, ref, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("parse session show: %v\n%s", err, r.stdout)
	}
	return s
}

func (in *instance) sessions(t testing.TB, vm string) []api.Session {
	t.Helper()
	var ss []api.Session
	r := in.must(t, "vm", "session", "list", vm, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ss); err != nil {
		t.Fatalf("parse session list: %v\n%s", err, r.stdout)
	}
	return ss
}

// TestSession drives guest sessions end to end on one VM: attach by a
// program, replay, a PTY through tmux, preflight failures, a daemon
// SIGKILL during an attach and a guest agent restart.
func TestSession(t *testing.T) {
	in := shared(t)
	const vm = "e2e-sess"
	in.createVM(t, vm)
	defer in.run(nil, "vm", "delete", "--force", vm)

	t.Run("pipe session attached by a program", func(t *testing.T) {
		// stdout: the input upper-cased; stderr: the input verbatim.
		in.must(t, "vm", "session", "start", vm, "--name", "echo", "--", "sh", "-c", "tee /dev/stderr | tr a-z A-Z; exit 7")
		var input bytes.Buffer
		for i := 0; input.Len() < 300<<10; i++ {
			fmt.Fprintf(&input, "line %d of the attach test: the quick brown fox jumps over the lazy dog\n", i)
		}
		p := in.startCLI(t, "vm", "session", "attach", vm, "echo", "--from-start")
		go func() {
			// Several writes, so the bytes arrive as many frames.
			data := input.Bytes()
			for len(data) > 0 {
				n := min(len(data), 7001)
				p.stdin.Write(data[:n])
				data = data[n:]
			}
			p.stdin.Close()
		}()
		if code := p.wait(t, 3*time.Minute); code != 7 {
			t.Fatalf("attach exit = %d, want the session's 7: %s", code, p)
		}
		if got, want := p.stdout.String(), strings.ToUpper(input.String()); got != want {
			t.Fatalf("stdout differs: got %d bytes, want %d", len(got), len(want))
		}
		if got := p.stderr.String(); got != input.String() {
			t.Fatalf("stderr differs: got %d bytes, want %d (tail %q)", len(got), input.Len(), got[max(0, len(got)-200):])
		}
		s := in.session(t, vm, "echo")
		// No workspace in this VM: the default cwd is /root.
		if s.State != api.SessionExited || s.Exit == nil || s.Exit.Code != 7 || s.Mode != api.SessionModePipe || s.Cwd != "/root" {
			t.Fatalf("session after exit: %+v", s)
		}
		// Re-attaching to an ended session replays and exits with its status.
		r := in.run(nil, "vm", "session", "attach", vm, "echo", "--tail", "1", "--no-stdin")
		if r.code != 7 || r.stdout != strings.ToUpper(lastLine(input.String())) {
			t.Fatalf("attach to the ended session: %s", r)
		}
	})

	t.Run("output while detached, then replay", func(t *testing.T) {
		in.must(t, "vm", "session", "start", vm, "--name", "replay", "--", "sh", "-c",
			"for i in $(seq 1 50); do echo line$i; done; echo errline >&2; exec sleep 600")
		var want strings.Builder
		for i := 1; i <= 50; i++ {
			fmt.Fprintf(&want, "line%d\n", i)
		}
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(in.must(t, "vm", "session", "logs", vm, "replay").stdout, "line50\n") {
			if time.Now().After(deadline) {
				t.Fatal("the session's output never reached its log")
			}
			time.Sleep(200 * time.Millisecond)
		}
		if r := in.must(t, "vm", "session", "logs", vm, "replay", "--stderr"); r.stdout != "errline\n" {
			t.Fatalf("logs --stderr: %s", r)
		}

		p := in.startCLI(t, "vm", "session", "attach", vm, "replay", "--from-start", "--no-stdin")
		p.waitStdout(t, "line50\n", time.Minute)
		deadline = time.Now().Add(30 * time.Second)
		for p.stderr.String() != "errline\n" && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if p.stdout.String() != want.String() || p.stderr.String() != "errline\n" {
			t.Fatalf("--from-start replay: %s", p)
		}
		// Ctrl-C detaches in pipe mode; the session keeps running.
		p.cmd.Process.Signal(syscall.SIGINT)
		if code := p.wait(t, 30*time.Second); code != 0 || !strings.Contains(p.stderr.String(), "detached") {
			t.Fatalf("Ctrl-C: exit %d: %s", code, p)
		}

		p = in.startCLI(t, "vm", "session", "attach", vm, "replay", "--tail", "3", "--no-stdin")
		p.waitStdout(t, "line50\n", time.Minute)
		time.Sleep(300 * time.Millisecond)
		if p.stdout.String() != "line48\nline49\nline50\n" {
			t.Fatalf("--tail 3 replay: %s", p)
		}
		p.cmd.Process.Signal(syscall.SIGINT)
		p.wait(t, 30*time.Second)
		if s := in.session(t, vm, "replay"); s.State != api.SessionRunning {
			t.Fatalf("session after two detaches: %+v", s)
		}
		r := in.must(t, "vm", "session", "stop", vm, "replay", "--timeout", "3s", "--json")
		var s api.Session
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.State != api.SessionExited || s.Exit == nil || s.Exit.Signal != 15 {
			t.Fatalf("stop: %v %s", err, r)
		}
	})

	t.Run("pty session through tmux with a resize", func(t *testing.T) {
		if _, err := exec.LookPath("tmux"); err != nil {
			t.Fatal("tmux is not installed (run `make deps`)")
		}
		in.must(t, "vm", "session", "start", vm, "--name", "tty", "--pty", "--env", "PS1=guest$ ", "--", "bash", "--norc", "--noprofile")
		sock := "banger-e2e-" + fmt.Sprint(time.Now().UnixNano())
		tmux := func(args ...string) string {
			t.Helper()
			out, err := exec.Command("tmux", append([]string{"-L", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("tmux %v: %v: %s", args, err, out)
			}
			return string(out)
		}
		defer exec.Command("tmux", "-L", sock, "kill-server").Run()
		attachCmd := fmt.Sprintf("env BANGER_HOME=%s %s vm session attach %s tty", in.home, bangerBin, vm)
		tmux("new-session", "-d", "-s", "s", "-x", "100", "-y", "30", attachCmd)
		tmux("set-option", "-t", "s", "remain-on-exit", "on")
		tmux("set-option", "-t", "s", "status", "off")
		screen := func() string { return tmux("capture-pane", "-p", "-t", "s") }
		waitScreen := func(want string) {
			t.Helper()
			deadline := time.Now().Add(time.Minute)
			for !strings.Contains(screen(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("screen never showed %q:\n%s\ndaemon log:\n%s", want, screen(), in.daemonLog())
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		size := func() string {
			return strings.TrimSpace(tmux("display-message", "-p", "-t", "s", "#{pane_height} #{pane_width}"))
		}
		tmux("send-keys", "-t", "s", "echo $((6*7))", "Enter")
		waitScreen("42")
		first := size()
		tmux("send-keys", "-t", "s", "stty size", "Enter")
		waitScreen(first)
		tmux("resize-window", "-t", "s", "-x", "120", "-y", "40")
		second := size()
		if second == first {
			t.Fatalf("tmux did not resize: %s", second)
		}
		// The guest terminal follows the local one (SIGWINCH -> Resize).
		deadline := time.Now().Add(30 * time.Second)
		for {
			tmux("send-keys", "-t", "s", "clear; stty size", "Enter")
			time.Sleep(500 * time.Millisecond)
			if strings.Contains(screen(), second) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("guest terminal did not become %s:\n%s", second, screen())
			}
		}
		// Ctrl-P Ctrl-Q detaches and leaves the shell running.
		tmux("send-keys", "-t", "s", "C-p", "C-q")
		waitScreen("detached from session tty")
		if s := in.session(t, vm, "tty"); s.State != api.SessionRunning || s.Mode != api.SessionModePTY {
			t.Fatalf("PTY session after detach: %+v", s)
		}
		// Attach again, end the shell, and the attach exits with its status.
		tmux("respawn-pane", "-k", "-t", "s", attachCmd+"; echo attach-exit=$?; sleep 60")
		// Wait until the new attach carries keys to the guest shell and
		// its output back (only the guest computes 1+1).
		tmux("send-keys", "-t", "s", "echo re$((1+1))attached", "Enter")
		waitScreen("re2attached")
		tmux("send-keys", "-t", "s", "exit 3", "Enter")
		waitScreen("attach-exit=3")
	})

	t.Run("preflight failures start nothing", func(t *testing.T) {
		before := len(in.sessions(t, vm))
		r := in.run(nil, "vm", "session", "start", vm, "--cwd", "/no/such/dir", "--", "true")
		if r.code == 0 || !strings.Contains(r.stderr, "/no/such/dir") || !strings.Contains(r.stderr, "hint:") {
			t.Fatalf("missing cwd: %s", r)
		}
		r = in.run(nil, "vm", "session", "start", vm, "--", "no-such-command-xyz", "arg")
		if r.code == 0 || !strings.Contains(r.stderr, "no-such-command-xyz") || !strings.Contains(r.stderr, "hint:") {
			t.Fatalf("missing command: %s", r)
		}
		if after := len(in.sessions(t, vm)); after != before {
			t.Fatalf("a failed preflight left a session: %d before, %d after", before, after)
		}
		r = in.run(nil, "vm", "session", "attach", vm, "no-such-session")
		if r.code == 0 || !strings.Contains(r.stderr, "no-such-session") {
			t.Fatalf("attach to an unknown session: %s", r)
		}
	})

	t.Run("daemon SIGKILL during an attach", func(t *testing.T) {
		in.must(t, "vm", "session", "start", vm, "--name", "long", "--", "sh", "-c",
			`while IFS= read -r l; do echo "got:$l"; done; echo bye; exit 5`)
		p := in.startCLI(t, "vm", "session", "attach", vm, "long")
		io.WriteString(p.stdin, "one\n")
		p.waitStdout(t, "got:one\n", time.Minute)
		in.killDaemon()
		if code := p.wait(t, 30*time.Second); code == 0 || !strings.Contains(p.stderr.String(), "re-attach") {
			t.Fatalf("attach after the daemon died: exit %d: %s", code, p)
		}
		in.startDaemon()
		if ss := in.sessions(t, vm); !hasSession(ss, "long", api.SessionRunning) {
			t.Fatalf("after the daemon restart the session is not listed as running: %+v", ss)
		}
		p = in.startCLI(t, "vm", "session", "attach", vm, "long")
		io.WriteString(p.stdin, "two\n")
		p.waitStdout(t, "got:two\n", time.Minute)
		p.stdin.Close()
		if code := p.wait(t, time.Minute); code != 5 || p.stdout.String() != "got:two\nbye\n" {
			t.Fatalf("re-attach: exit %d: %s", code, p)
		}
	})

	t.Run("guest agent restart with a session running", func(t *testing.T) {
		in.must(t, "vm", "session", "start", vm, "--name", "survivor", "--", "sh", "-c",
			`while IFS= read -r l; do echo "got:$l"; done; exit 4`)
		before := in.must(t, "vm", "exec", vm, "--", "systemctl", "show", "-p", "MainPID", "--value", "banger-agent").stdout
		// --no-block: the exec's own stream goes through the agent.
		in.run(nil, "vm", "exec", vm, "--", "systemctl", "restart", "--no-block", "banger-agent")
		deadline := time.Now().Add(2 * time.Minute)
		for {
			r := in.run(nil, "vm", "exec", vm, "--", "systemctl", "show", "-p", "MainPID", "--value", "banger-agent")
			if r.code == 0 && strings.TrimSpace(r.stdout) != strings.TrimSpace(before) && strings.TrimSpace(r.stdout) != "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agent did not restart (MainPID %s): %s", before, r)
			}
			time.Sleep(time.Second)
		}
		if ss := in.sessions(t, vm); !hasSession(ss, "survivor", api.SessionRunning) {
			t.Fatalf("after the agent restart: %+v", ss)
		}
		p := in.startCLI(t, "vm", "session", "attach", vm, "survivor")
		io.WriteString(p.stdin, "x\n")
		p.waitStdout(t, "got:x\n", time.Minute)
		p.stdin.Close()
		if code := p.wait(t, time.Minute); code != 4 {
			t.Fatalf("attach after the agent restart: exit %d: %s", code, p)
		}
	})

	t.Run("event bus", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		states := make(chan string, 64)
		// The daemon answers the events request only once the watch is
		// registered, so the first response byte is the signal to go on.
		registered := make(chan struct{})
		var once sync.Once
		c := client.NewWithDialer(in.socket(), func(ctx context.Context) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, "unix", in.socket())
			if err != nil {
				return nil, err
			}
			return &onFirstRead{Conn: conn, f: func() { once.Do(func() { close(registered) }) }}, nil
		})
		go c.WatchEvents(ctx, vm, func(ev api.BusEvent) {
			if ev.Kind == api.EventSession && ev.VM == vm && ev.Session != nil && ev.Session.Name == "evt" {
				states <- ev.Session.State
			}
		})
		select {
		case <-registered:
		case <-ctx.Done():
			t.Fatal("the event watch was never answered")
		}
		in.must(t, "vm", "session", "start", vm, "--name", "evt", "--", "sh", "-c", "sleep 2")
		seen := map[string]bool{}
		for !seen[api.SessionExited] {
			select {
			case st := <-states:
				seen[st] = true
			case <-ctx.Done():
				t.Fatalf("no exited event for session evt; saw %v", seen)
			}
		}
		if !seen[api.SessionRunning] {
			t.Fatalf("no running event before exited: %v", seen)
		}
	})

	t.Run("list", func(t *testing.T) {
		r := in.must(t, "vm", "session", "list", vm)
		for _, name := range []string{"echo", "replay", "tty", "long", "survivor"} {
			if !strings.Contains(r.stdout, name) {
				t.Fatalf("session list lacks %s:\n%s", name, r.stdout)
			}
		}
	})

	t.Run("guest reboot marks live sessions lost", func(t *testing.T) {
		in.must(t, "vm", "session", "start", vm, "--name", "sleeper", "--", "sleep", "600")
		in.must(t, "vm", "restart", vm)
		s := in.session(t, vm, "sleeper")
		if s.State != api.SessionLost || s.Error == "" {
			t.Fatalf("after a guest reboot: %+v", s)
		}
		if ss := in.sessions(t, vm); !hasSession(ss, "sleeper", api.SessionLost) || !hasSession(ss, "echo", api.SessionExited) {
			t.Fatalf("list after a guest reboot: %+v", ss)
		}
	})
}

// onFirstRead calls f when the connection first yields bytes.
type onFirstRead struct {
	net.Conn
	f func()
}

func (c *onFirstRead) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.f()
	}
	return n, err
}

func hasSession(ss []api.Session, name, state string) bool {
	for _, s := range ss {
		if s.Name == name && s.State == state {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	s = strings.TrimSuffix(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:] + "\n"
}
