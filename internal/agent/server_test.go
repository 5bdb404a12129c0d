package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/mux"
)

// testAgent runs the real agent on a Unix socket, one host connection at a
// time, like QEMU's chardev socket in front of the virtio-serial port.
type testAgent struct {
	path string
	srv  *Server
}

func startAgent(t *testing.T) *testAgent {
	t.Helper()
	return startAgentWith(t, nil)
}

// startAgentWith is startAgent with configure applied to the server
// before it serves (its seams).
func startAgentWith(t *testing.T, configure func(*Server)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("BANGER_TEST_AGENT_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv := NewServer(log)
	srv.defaultDir = dir
	if configure != nil {
		configure(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			return ln.Accept()
		})
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return &testAgent{path: path, srv: srv}
}

func (a *testAgent) dial(t *testing.T) *agentclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agentclient.DialUnix(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type execResult struct {
	stdout, stderr string
	st             api.ExitStatus
}

func runCmd(t *testing.T, c *agentclient.Client, req api.ExecRequest, stdin io.Reader) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Exec(ctx, req)
	if err != nil {
		t.Fatalf("exec %v: %v", req.Argv, err)
	}
	defer conn.Close()
	var out, errb bytes.Buffer
	st, err := mux.RunExec(ctx, conn, stdin, &out, &errb, nil, nil)
	if err != nil {
		t.Fatalf("exec %v: %v", req.Argv, err)
	}
	return execResult{out.String(), errb.String(), st}
}

func TestHealth(t *testing.T) {
	c := startAgent(t).dial(t)
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if h.Version != buildinfo.Version || h.Hostname != host || h.UptimeSeconds <= 0 {
		t.Fatalf("health %+v", h)
	}
	if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(h.BootID) {
		t.Fatalf("boot id %q", h.BootID)
	}
}

func TestExec(t *testing.T) {
	c := startAgent(t).dial(t)
	bin := t.TempDir()
	script := filepath.Join(bin, "hello")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi from $0\n"), 0o755)
	noExec := filepath.Join(bin, "noexec")
	os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644)
	garbage := filepath.Join(bin, "garbage")
	os.WriteFile(garbage, []byte("\x00\x01\x02 not a program"), 0o755)
	badInterp := filepath.Join(bin, "badinterp")
	os.WriteFile(badInterp, []byte("#!/nonexistent/sh\n"), 0o755)

	tests := []struct {
		name   string
		req    api.ExecRequest
		stdin  io.Reader
		stdout string // regexp
		stderr string
		code   int
		errMsg string
	}{
		{name: "output and code", req: api.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}},
			stdout: "^out\n$", stderr: "err\n", code: 3},
		{name: "stdin", req: api.ExecRequest{Argv: []string{"cat"}, Stdin: true}, stdin: strings.NewReader("hello\nworld\n"),
			stdout: "^hello\nworld\n$"},
		{name: "no stdin reads /dev/null", req: api.ExecRequest{Argv: []string{"cat"}}, stdout: "^$"},
		{name: "env", req: api.ExecRequest{Argv: []string{"sh", "-c", `echo "$HOME $USER $LANG $FOO $TERM"`}, Env: map[string]string{"FOO": "bar"}},
			stdout: "^/root root C.UTF-8 bar \n$"},
		{name: "dir", req: api.ExecRequest{Argv: []string{"pwd"}, Dir: bin}, stdout: "^" + regexp.QuoteMeta(bin) + "\n$"},
		{name: "path from request env", req: api.ExecRequest{Argv: []string{"hello"}, Env: map[string]string{"PATH": bin}},
			stdout: "^hi from " + regexp.QuoteMeta(script) + "\n$"},
		{name: "relative to dir", req: api.ExecRequest{Argv: []string{"./hello"}, Dir: bin}, stdout: "^hi from ./hello\n$"},
		{name: "not found", req: api.ExecRequest{Argv: []string{"no-such-command-xyz"}}, code: 127,
			errMsg: `exec: "no-such-command-xyz": executable file not found in $PATH`},
		{name: "missing path", req: api.ExecRequest{Argv: []string{"/nonexistent/x"}}, code: 127,
			errMsg: `exec: "/nonexistent/x": no such file or directory`},
		{name: "not executable", req: api.ExecRequest{Argv: []string{noExec}}, code: 126, errMsg: "permission denied"},
		{name: "not executable in PATH", req: api.ExecRequest{Argv: []string{"noexec"}, Env: map[string]string{"PATH": bin}}, code: 126, errMsg: "permission denied"},
		{name: "directory", req: api.ExecRequest{Argv: []string{bin}}, code: 126, errMsg: "is a directory"},
		{name: "exec format error", req: api.ExecRequest{Argv: []string{garbage}}, code: 126, errMsg: "exec format error"},
		{name: "missing interpreter", req: api.ExecRequest{Argv: []string{badInterp}}, code: 126, errMsg: "no such file or directory"},
		{name: "tty start failure", req: api.ExecRequest{Argv: []string{garbage}, TTY: true}, code: 126, errMsg: "exec format error"},
		{name: "killed by signal", req: api.ExecRequest{Argv: []string{"sh", "-c", "kill -9 $$"}}, code: 137},
		// A background child keeps stdout open; exec still ends promptly.
		{name: "background holder", req: api.ExecRequest{Argv: []string{"sh", "-c", "sleep 3 & echo started"}}, stdout: "^started\n$"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := time.Now()
			r := runCmd(t, c, tt.req, tt.stdin)
			if r.st.Code != tt.code {
				t.Fatalf("code %d (%+v), want %d; stderr %q", r.st.Code, r.st, tt.code, r.stderr)
			}
			if tt.stdout != "" && !regexp.MustCompile(tt.stdout).MatchString(r.stdout) {
				t.Errorf("stdout %q, want %q", r.stdout, tt.stdout)
			}
			if r.stderr != tt.stderr {
				t.Errorf("stderr %q, want %q", r.stderr, tt.stderr)
			}
			if !strings.Contains(r.st.Error, tt.errMsg) || (tt.errMsg == "") != (r.st.Error == "") {
				t.Errorf("error %q, want %q", r.st.Error, tt.errMsg)
			}
			if d := time.Since(t0); d > 2*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}

func TestExecSignal(t *testing.T) {
	c := startAgent(t).dial(t)
	tests := []struct {
		argv []string
		sig  int
	}{
		{[]string{"sleep", "100"}, 2},
		{[]string{"sleep", "100"}, 9},
		// The whole group gets it: sh and its sleep.
		{[]string{"sh", "-c", "sleep 100; echo survived"}, 15},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.sig), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := c.Exec(ctx, api.ExecRequest{Argv: tt.argv})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			signals := make(chan int, 1)
			signals <- tt.sig
			var out bytes.Buffer
			st, err := mux.RunExec(ctx, conn, nil, &out, nil, nil, signals)
			if err != nil {
				t.Fatal(err)
			}
			if st.Code != 128+tt.sig || st.Signal != tt.sig || out.Len() != 0 {
				t.Fatalf("status %+v, output %q", st, out.String())
			}
		})
	}
}

// 20 MB through the channel: complete, in order, and the command is held
// back while nobody reads (no unbounded buffering in the agent).
func TestExecLargeOutputBackpressure(t *testing.T) {
	c := startAgent(t).dial(t)
	mark := filepath.Join(t.TempDir(), "done")
	const lines = 2_500_000 // "1\n".."2500000\n" is about 19.6 MB
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("seq 1 %d; touch %s", lines, mark)}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(mark); err == nil {
		t.Fatal("the command finished while nobody read its output")
	}
	var buf bytes.Buffer
	st, err := mux.RunExec(ctx, conn, nil, &buf, nil, nil, nil)
	if err != nil || st.Code != 0 {
		t.Fatalf("status %+v err %v", st, err)
	}
	var want bytes.Buffer
	for i := 1; i <= lines; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	if !bytes.Equal(buf.Bytes(), want.Bytes()) {
		t.Fatalf("output differs: got %d bytes, want %d", buf.Len(), want.Len())
	}
}

func TestExecTTY(t *testing.T) {
	c := startAgent(t).dial(t)
	tests := []struct {
		name   string
		req    api.ExecRequest
		stdin  io.Reader
		stdout string
	}{
		{"tty", api.ExecRequest{Argv: []string{"tty"}, TTY: true}, nil, `^/dev/pts/\d+\r\n$`},
		{"size and term", api.ExecRequest{Argv: []string{"sh", "-c", "stty size; echo $TERM"}, TTY: true, Rows: 33, Cols: 99}, nil, "^33 99\r\nxterm-256color\r\n$"},
		{"term from env", api.ExecRequest{Argv: []string{"sh", "-c", "echo $TERM"}, TTY: true, Env: map[string]string{"TERM": "vt100"}}, nil, "^vt100\r\n$"},
		// End of stdin is ^D on a terminal: cat sees EOF and exits.
		{"stdin then eof", api.ExecRequest{Argv: []string{"cat"}, TTY: true, Stdin: true}, strings.NewReader("abc\n"), "^abc\r\nabc\r\n$"},
		{"session leader", api.ExecRequest{Argv: []string{"sh", "-c", `test "$(ps -o sid= -p $$)" -eq $$ && echo leader`}, TTY: true}, nil, "^leader\r\n$"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCmd(t, c, tt.req, tt.stdin)
			if r.st.Code != 0 || r.stderr != "" {
				t.Fatalf("status %+v stderr %q stdout %q", r.st, r.stderr, r.stdout)
			}
			if !regexp.MustCompile(tt.stdout).MatchString(r.stdout) {
				t.Fatalf("stdout %q, want %q", r.stdout, tt.stdout)
			}
		})
	}
}

// Frames written by hand so the resize is known to precede the input.
func TestExecTTYResize(t *testing.T) {
	c := startAgent(t).dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", "read x; stty size"}, TTY: true, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := mux.NewWriter(conn)
	if err := w.WriteResize(40, 100); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(mux.Stdin, []byte("go\n")); err != nil {
		t.Fatal(err)
	}
	r := mux.NewReader(conn)
	var out []byte
	for {
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == mux.Exit {
			break
		}
		out = append(out, f.Payload...)
	}
	if !strings.Contains(string(out), "40 100") {
		t.Fatalf("output %q", out)
	}
}

// A client that goes away kills the command's whole process group.
func TestExecClientGoneKillsGroup(t *testing.T) {
	for _, how := range []string{"stream", "session"} {
		t.Run(how, func(t *testing.T) {
			c := startAgent(t).dial(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sh", "-c", "sleep 100 & echo $!; wait"}})
			if err != nil {
				t.Fatal(err)
			}
			f, err := mux.NewReader(conn).ReadFrame()
			if err != nil || f.Type != mux.Stdout {
				t.Fatalf("first frame %v %v", f.Type, err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(f.Payload)))
			if err != nil {
				t.Fatal(err)
			}
			if how == "stream" {
				conn.Close()
			} else {
				c.Close()
			}
			deadline := time.Now().Add(3 * time.Second)
			for alive(pid) {
				if time.Now().After(deadline) {
					t.Fatalf("background child %d survived its client", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// A client that leaves while finished output still waits for window space
// must not leave the exec (and its stream) hanging.
func TestExecClientGoneWhileDraining(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// More than the client's 4 MiB stream window: head exits while the
	// agent still holds output nobody reads.
	conn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"head", "-c", "6000000", "/dev/zero"}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if a.srv.execs.Load() != 1 {
		t.Fatalf("%d execs running", a.srv.execs.Load())
	}
	conn.Close()
	deadline := time.Now().Add(3 * time.Second)
	for a.srv.execs.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("exec still running after its client left")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid runs (a zombie has already been killed).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestExecBadRequests(t *testing.T) {
	c := startAgent(t).dial(t)
	tests := []struct {
		name   string
		body   string
		header map[string]string
		status int
		msg    string
	}{
		{"malformed json", `{"argv":`, nil, 400, "decode exec request"},
		{"empty argv", `{"argv":[]}`, nil, 400, "empty command"},
		{"unknown type", `{"argv":"sh"}`, nil, 400, "decode exec request"},
		{"trailing data", `{"argv":["true"]} x`, nil, 400, "trailing data"},
		{"no upgrade", `{"argv":["true"]}`, map[string]string{"Connection": "close", "Upgrade": ""}, 400, "protocol upgrade"},
		{"wrong protocol", `{"argv":["true"]}`, map[string]string{"Upgrade": "websocket"}, 400, "protocol upgrade"},
		{"missing dir", `{"argv":["true"],"dir":"/nonexistent"}`, nil, 400, "working directory /nonexistent does not exist"},
		{"too large", `{"argv":["` + strings.Repeat("a", api.MaxBodyBytes) + `"]}`, nil, 413, "larger than 1 MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := c.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			req, _ := http.NewRequest("POST", "http://agent/v1/exec", strings.NewReader(tt.body))
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", api.MuxProtocol)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			go req.Write(s)
			resp, err := http.ReadResponse(bufio.NewReader(s), req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb api.ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || eb.Error == nil || !strings.Contains(eb.Error.Message, tt.msg) || eb.Error.Hint == "" {
				t.Fatalf("status %d body %+v", resp.StatusCode, eb.Error)
			}
		})
	}
	// The client's typed error carries message and hint.
	_, err := c.Exec(context.Background(), api.ExecRequest{})
	var ae *api.Error
	var se *agentclient.StatusError
	if !errors.As(err, &ae) || !errors.As(err, &se) || se.StatusCode != 400 || ae.Message != "empty command" || ae.Hint == "" || ae.Code != api.CodeInvalid {
		t.Fatalf("exec with empty argv: %v", err)
	}
}

// The host side goes away and a new host connects: the agent notices the
// end of the old session and serves a fresh one. Daemon restarts rest on
// this.
func TestReconnect(t *testing.T) {
	a := startAgent(t)
	for i := range 3 {
		c := a.dial(t)
		if _, err := c.Health(context.Background()); err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		if r := runCmd(t, c, api.ExecRequest{Argv: []string{"echo", "ok"}}, nil); r.stdout != "ok\n" {
			t.Fatalf("host %d: exec %+v", i, r)
		}
		c.Close()
	}
	// A host that sends garbage before the preamble is ignored until it
	// leaves; one that sends garbage after it loses its session. Either
	// way the next host is served.
	raw, err := net.Dial("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("GET / HTTP/1.1\r\nHost: nope\r\n\r\n\xffBANGER"))
	raw.Close()
	raw, err = net.Dial("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	linked, err := mux.LinkHost(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	linked.Write([]byte("GET / HTTP/1.1\r\nHost: nope\r\n\r\n"))
	io.Copy(io.Discard, linked) // the agent hangs up
	raw.Close()
	if _, err := a.dial(t).Health(context.Background()); err != nil {
		t.Fatalf("after garbage hosts: %v", err)
	}
}

// A host that connects but whose requests are lost (the guest end was not
// open yet at boot) is retried by WaitReady.
func TestWaitReadyAgainstAgent(t *testing.T) {
	a := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agentclient.WaitReady(ctx, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.path)
	}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
}
