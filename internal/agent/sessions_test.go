package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/session"
	"golang.org/x/sys/unix"
)

// The test binary is /proc/self/exe for the agent under test, so it must
// act as `banger-agent supervise` when re-executed that way.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "supervise" {
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		os.Exit(SuperviseCommand(os.Args[2:], os.Stderr, log))
	}
	os.Exit(m.Run())
}

// useSessionsDir points the agent's sessions at a private directory and
// stops what is left at the end of the test.
func useSessionsDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bs")
	if err != nil {
		t.Fatal(err)
	}
	oldDir, oldLimits := sessionsDir, sessionLimits
	sessionsDir = dir
	sessionLimits = session.Limits{Linger: 200 * time.Millisecond, LaunchWindow: 150 * time.Millisecond}
	t.Cleanup(func() {
		m := session.NewManager(session.Options{Dir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		ss, _ := m.List(context.Background())
		for _, s := range ss {
			if !s.Final() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				m.Stop(ctx, s.ID, 50*time.Millisecond)
				cancel()
			}
		}
		time.Sleep(250 * time.Millisecond) // supervisors linger
		os.RemoveAll(dir)
		sessionsDir, sessionLimits = oldDir, oldLimits
	})
	return dir
}

func apiCode(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

func TestSessionsOverAgent(t *testing.T) {
	useSessionsDir(t)
	a := startAgent(t)
	c := a.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	s, err := c.StartSession(ctx, api.StartSessionRequest{
		Name: "echo",
		Argv: []string{"sh", "-c", `echo ready; while read l; do echo "out:$l"; echo "err:$l" >&2; done; exit 4`},
		Env:  map[string]string{"K": "v"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.State != api.SessionRunning || s.Cwd != a.srv.defaultDir || strings.Join(s.EnvKeys, ",") != "K" || len(s.BootID) != 36 {
		t.Fatalf("session %+v", s)
	}

	// Preflight failures are 400s naming the culprit; a taken name is 409.
	_, err = c.StartSession(ctx, api.StartSessionRequest{Argv: []string{"true"}, Cwd: "/no/such/dir"})
	var se *agentclient.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusBadRequest || !strings.Contains(err.Error(), "/no/such/dir") {
		t.Fatalf("missing cwd: %v", err)
	}
	_, err = c.StartSession(ctx, api.StartSessionRequest{Argv: []string{"no-such-cmd-xyz"}})
	if apiCode(err) != api.CodeInvalid || !strings.Contains(err.Error(), "no-such-cmd-xyz") {
		t.Fatalf("missing command: %v", err)
	}
	_, err = c.StartSession(ctx, api.StartSessionRequest{Name: "echo", Argv: []string{"true"}})
	if apiCode(err) != api.CodeConflict {
		t.Fatalf("taken name: %v", err)
	}

	ss, err := c.ListSessions(ctx)
	if err != nil || len(ss) != 1 || ss[0].ID != s.ID {
		t.Fatalf("list %+v %v", ss, err)
	}
	if got, err := c.GetSession(ctx, "echo"); err != nil || got.ID != s.ID {
		t.Fatalf("get by name %+v %v", got, err)
	}
	if _, err := c.GetSession(ctx, "nope"); apiCode(err) != api.CodeNotFound {
		t.Fatalf("get unknown: %v", err)
	}
	if _, err := c.GetSession(ctx, "..."); apiCode(err) != api.CodeInvalid {
		t.Fatalf("get bad ref: %v", err)
	}

	// A read-only attacher and a writer; a second writer is refused.
	ro, err := c.AttachSession(ctx, "echo", api.AttachSessionRequest{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	roDone := make(chan execResult, 1)
	go func() {
		var out, errb bytes.Buffer
		st, _ := mux.RunExec(ctx, ro, nil, &out, &errb, nil, nil)
		roDone <- execResult{out.String(), errb.String(), st}
	}()
	rw, err := c.AttachSession(ctx, "echo", api.AttachSessionRequest{Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if _, err := c.AttachSession(ctx, "echo", api.AttachSessionRequest{Stdin: true}); apiCode(err) != api.CodeConflict || !strings.Contains(err.Error(), "stdin writer") {
		t.Fatalf("second writer: %v", err)
	}
	var out, errb bytes.Buffer
	st, err := mux.RunExec(ctx, rw, strings.NewReader("a\nb\n"), &out, &errb, nil, nil)
	if err != nil || st.Code != 4 || out.String() != "out:a\nout:b\n" || errb.String() != "err:a\nerr:b\n" {
		t.Fatalf("writer: %+v %v stdout %q stderr %q", st, err, out.String(), errb.String())
	}
	r := <-roDone
	if r.st.Code != 4 || r.stdout != "ready\nout:a\nout:b\n" || r.stderr != "err:a\nerr:b\n" {
		t.Fatalf("reader: %+v", r)
	}

	var logs bytes.Buffer
	if err := c.SessionLogs(ctx, "echo", api.SessionLogsRequest{Stream: "stderr", Tail: 1}, &logs); err != nil || logs.String() != "err:b\n" {
		t.Fatalf("logs %q %v", logs.String(), err)
	}
	if err := c.SessionLogs(ctx, "echo", api.SessionLogsRequest{Stream: "bogus"}, io.Discard); apiCode(err) != api.CodeInvalid {
		t.Fatalf("bad stream: %v", err)
	}
	got, err := c.GetSession(ctx, s.ID)
	if err != nil || got.State != api.SessionExited || got.Exit.Code != 4 {
		t.Fatalf("ended %+v %v", got, err)
	}
	if err := c.RemoveSession(ctx, "echo"); err != nil {
		t.Fatal(err)
	}
}

func TestSessionStopSignalFollow(t *testing.T) {
	useSessionsDir(t)
	c := startAgent(t).dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := c.StartSession(ctx, api.StartSessionRequest{Argv: []string{"sh", "-c", `trap 'echo hup' HUP; echo ready; while :; do sleep 0.05; done`}})
	if err != nil {
		t.Fatal(err)
	}
	followed := make(chan string, 1)
	go func() {
		var b bytes.Buffer
		err := c.SessionLogs(ctx, s.ID, api.SessionLogsRequest{Follow: true}, &b)
		if err != nil {
			b.WriteString("error: " + err.Error())
		}
		followed <- b.String()
	}()
	waitLogs := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var b bytes.Buffer
			c.SessionLogs(ctx, s.ID, api.SessionLogsRequest{}, &b)
			if b.String() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("logs %q, want %q", b.String(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitLogs("ready\n")
	if _, err := c.SignalSession(ctx, s.ID, int(syscall.SIGHUP)); err != nil {
		t.Fatal(err)
	}
	waitLogs("ready\nhup\n")
	got, err := c.StopSession(ctx, s.ID, 2*time.Second)
	if err != nil || got.State != api.SessionExited || got.Exit.Signal != int(syscall.SIGTERM) {
		t.Fatalf("stop %+v %v", got, err)
	}
	if out := <-followed; out != "ready\nhup\n" {
		t.Fatalf("follow: %q", out)
	}
	if _, err := c.SignalSession(ctx, s.ID, int(syscall.SIGHUP)); apiCode(err) != api.CodeConflict {
		t.Fatalf("signal after the end: %v", err)
	}
}

// TestSessionSurvivesAgentRestart: sessions outlive the agent (its
// supervisor is its own process) and a new agent finds them.
func TestSessionSurvivesAgentRestart(t *testing.T) {
	dir := useSessionsDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	first := startAgent(t)
	s, err := first.dial(t).StartSession(ctx, api.StartSessionRequest{Name: "svc", Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	// The supervisor is in its own session, not the agent's.
	if sid, _ := unix.Getsid(s.SupervisorPID); sid != s.SupervisorPID {
		t.Fatalf("supervisor %d is in session %d", s.SupervisorPID, sid)
	}
	if _, err := os.Stat(filepath.Join(dir, s.ID, "meta.json")); err != nil {
		t.Fatal(err)
	}

	c := startAgent(t).dial(t)
	ss, err := c.ListSessions(ctx)
	if err != nil || len(ss) != 1 || ss[0].State != api.SessionRunning {
		t.Fatalf("list %+v %v", ss, err)
	}
	conn, err := c.AttachSession(ctx, "svc", api.AttachSessionRequest{Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out bytes.Buffer
	st, err := mux.RunExec(ctx, conn, strings.NewReader("still here\n"), &out, nil, nil, nil)
	if err != nil || st.Code != 0 || out.String() != "still here\n" {
		t.Fatalf("attach after restart: %+v %v %q", st, err, out.String())
	}
}

func TestSessionPTYOverAgent(t *testing.T) {
	useSessionsDir(t)
	c := startAgent(t).dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := c.StartSession(ctx, api.StartSessionRequest{PTY: true, Argv: []string{"sh", "-c", `read x; stty size; echo got:$x`}})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.AttachSession(ctx, s.ID, api.AttachSessionRequest{FromStart: true, Stdin: true, Rows: 33, Cols: 111})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out bytes.Buffer
	st, err := mux.RunExec(ctx, conn, strings.NewReader("yo\n"), &out, nil, nil, nil)
	if err != nil || st.Code != 0 || !strings.Contains(out.String(), "33 111\r\ngot:yo\r\n") {
		t.Fatalf("pty attach: %+v %v %q", st, err, out.String())
	}
}
