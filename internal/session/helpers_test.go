package session

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
)

// The test binary doubles as the supervisor: launchTest re-executes it
// with superviseEnv set, as the agent re-executes itself.
const superviseEnv = "BANGER_SESSION_TEST_SUPERVISE"

func TestMain(m *testing.M) {
	if os.Getenv(superviseEnv) == "1" {
		os.Exit(superviseMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func superviseMain(args []string) int {
	fs := flag.NewFlagSet("supervise", flag.ContinueOnError)
	dir := fs.String("dir", "", "")
	if fs.Parse(args) != nil {
		return 2
	}
	syscall.CloseOnExec(0)
	syscall.CloseOnExec(3)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	err := Supervise(context.Background(), SuperviseOptions{
		Dir:   *dir,
		Spec:  os.Stdin,
		Ready: os.NewFile(3, "ready"),
		Start: func(path string, argv, env []string, dir string, files []*os.File, sys *syscall.SysProcAttr) (*os.Process, error) {
			return os.StartProcess(path, argv, &os.ProcAttr{Dir: dir, Env: env, Files: files, Sys: sys})
		},
		Log: log,
	})
	if err != nil {
		log.Error("supervise", "err", err)
		return 1
	}
	return 0
}

func launchTest(dir string, files []*os.File) error {
	p, err := os.StartProcess(os.Args[0], []string{os.Args[0], "--dir", dir}, &os.ProcAttr{
		Dir:   "/",
		Env:   append(os.Environ(), superviseEnv+"=1"),
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return err
	}
	go p.Wait()
	return nil
}

var testLimits = Limits{Linger: 300 * time.Millisecond, LaunchWindow: 150 * time.Millisecond, StallTimeout: time.Second}

func testOptions(t *testing.T, limits Limits) Options {
	t.Helper()
	// Unix socket paths are short: keep the directory shallow.
	dir, err := os.MkdirTemp("", "bs")
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Dir:        dir,
		Launch:     launchTest,
		BaseEnv:    map[string]string{"PATH": os.Getenv("PATH")},
		DefaultCwd: t.TempDir(),
		BootID:     "boot-1",
		Limits:     limits,
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// newManager returns a Manager on a fresh state directory; at the end
// of the test every session still running is killed and the directory
// removed.
func newManager(t *testing.T) *Manager {
	return newManagerLimits(t, testLimits)
}

func newManagerLimits(t *testing.T, limits Limits) *Manager {
	t.Helper()
	m := NewManager(testOptions(t, limits))
	t.Cleanup(func() {
		ss, _ := m.List(context.Background())
		for _, s := range ss {
			if !s.Final() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				m.Stop(ctx, s.ID, 50*time.Millisecond)
				cancel()
			}
		}
		// Supervisors linger briefly after their command; wait for them.
		deadline := time.Now().Add(3 * time.Second)
		for _, s := range ss {
			for lockHeld(filepath.Join(m.opts.Dir, s.ID)) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if t.Failed() {
			for _, s := range ss {
				b, _ := os.ReadFile(filepath.Join(m.opts.Dir, s.ID, supervisorLog))
				t.Logf("supervisor log of %s:\n%s", s.ID, b)
			}
		}
		os.RemoveAll(m.opts.Dir)
	})
	return m
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func start(t *testing.T, m *Manager, req api.StartSessionRequest) api.Session {
	t.Helper()
	s, err := m.Start(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatalf("start %v: %v", req.Argv, err)
	}
	return s
}

func sh(script string) []string { return []string{"sh", "-c", script} }

// result is what an attach saw until the exit frame.
type result struct {
	stdout, stderr string
	st             api.ExitStatus
}

// runAttach attaches and drives the stream to the exit frame with
// mux.RunExec, as the CLI will.
func runAttach(t *testing.T, m *Manager, ref string, req api.AttachSessionRequest, stdin io.Reader) result {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	c, err := m.Attach(ctx, ref, req)
	if err != nil {
		t.Fatalf("attach %s: %v", ref, err)
	}
	defer c.Close()
	var out, errb bytes.Buffer
	st, err := mux.RunExec(ctx, c, stdin, &out, &errb, nil, nil)
	if err != nil {
		t.Fatalf("attach %s: %v (stdout %q stderr %q)", ref, err, out.String(), errb.String())
	}
	return result{out.String(), errb.String(), st}
}

// watcher reads an attach stream in the background.
type watcher struct {
	conn net.Conn
	w    *mux.Writer

	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	exit   *api.ExitStatus
	err    error
	done   chan struct{}
}

func watch(t *testing.T, m *Manager, ref string, req api.AttachSessionRequest) *watcher {
	t.Helper()
	c, err := m.Attach(ctxT(t, 5*time.Second), ref, req)
	if err != nil {
		t.Fatalf("attach %s: %v", ref, err)
	}
	t.Cleanup(func() { c.Close() })
	return newWatcher(c)
}

func newWatcher(c net.Conn) *watcher {
	w := &watcher{conn: c, w: mux.NewWriter(c), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		r := mux.NewReader(c)
		for {
			f, err := r.ReadFrame()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			switch f.Type {
			case mux.Stdout:
				w.stdout.Write(f.Payload)
			case mux.Stderr:
				w.stderr.Write(f.Payload)
			case mux.Exit:
				st, _ := mux.DecodeExit(f.Payload)
				w.exit = &st
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// waitFor polls cond on the watcher's state.
func (w *watcher) waitFor(t *testing.T, what string, cond func(stdout, stderr string, exit *api.ExitStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		out, errs, exit, err := w.stdout.String(), w.stderr.String(), w.exit, w.err
		w.mu.Unlock()
		if cond(out, errs, exit) {
			return
		}
		if err != nil && exit == nil {
			t.Fatalf("waiting for %s: stream ended: %v (stdout %q stderr %q)", what, err, out, errs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out (stdout %q stderr %q)", what, out, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *watcher) waitStdout(t *testing.T, want string) {
	t.Helper()
	w.waitFor(t, "stdout "+want, func(o, _ string, _ *api.ExitStatus) bool { return strings.Contains(o, want) })
}

func (w *watcher) waitExit(t *testing.T) api.ExitStatus {
	t.Helper()
	var st api.ExitStatus
	w.waitFor(t, "exit", func(_, _ string, e *api.ExitStatus) bool {
		if e != nil {
			st = *e
		}
		return e != nil
	})
	return st
}

func (w *watcher) output() (string, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stdout.String(), w.stderr.String()
}

// waitState polls until the session reaches state.
func waitState(t *testing.T, m *Manager, ref, state string) api.Session {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := m.Get(context.Background(), ref)
		if err == nil && s.State == state {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s: state %q (err %v), want %q", ref, s.State, err, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
