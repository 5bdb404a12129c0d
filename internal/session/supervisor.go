package session

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/pty"
)

// StartFunc starts the session's command with exactly files as its
// descriptors 0, 1, 2. Process creation belongs to the agent (see the
// layering test in internal/system), which passes os.StartProcess.
type StartFunc func(path string, argv, env []string, dir string, files []*os.File, sys *syscall.SysProcAttr) (*os.Process, error)

// SuperviseOptions are the supervisor process's inputs.
type SuperviseOptions struct {
	// Dir is the session's directory; the Manager created it.
	Dir string
	// Spec carries the launch spec (JSON) from the Manager: it is the
	// supervisor's stdin, so environment values never touch the disk.
	Spec io.Reader
	// Ready is closed once meta.json holds the launch's outcome (running
	// past the launch window, exited, or failed); the Manager waits for
	// its EOF.
	Ready io.Closer
	Start StartFunc
	Log   *slog.Logger
}

// launchSpec is what the Manager hands a new supervisor.
type launchSpec struct {
	Session api.Session `json:"session"`
	Env     []string    `json:"env"`
	Rows    uint16      `json:"rows,omitempty"`
	Cols    uint16      `json:"cols,omitempty"`
	Limits  Limits      `json:"limits"`
}

const (
	// outputGrace is how long the output of an exited command may stay
	// quiet before the logs close: it only bounds the wait for background
	// children that inherited stdout and keep it open.
	outputGrace = 250 * time.Millisecond
	// requestTimeout bounds a socket client's request line.
	requestTimeout = 10 * time.Second
	// exitAckTimeout is how long an attacher may take to close its end
	// after the exit frame.
	exitAckTimeout = 5 * time.Second
	// veof is what a terminal reads as end of input (^D).
	veof = 0x04
)

type supervisor struct {
	dir    string
	log    *slog.Logger
	limits Limits

	logs    []*streamLog
	types   []mux.Type
	outputs []*os.File // read ends of the command's output
	master  *os.File   // PTY mode

	stdinMu sync.Mutex
	stdin   *os.File // pipe mode: write end of the command's stdin; nil once closed

	mu       sync.Mutex
	meta     api.Session
	proc     *os.Process
	reaped   bool        // no more signals to the pid: it may be reused
	stopping bool        // a stop was asked: an early exit is not a failed launch
	writer   *attachment // the one attacher whose stdin reaches the command
	active   int         // connections being served

	// done is closed once the command ended, its output is in the logs
	// and meta.json is final.
	done chan struct{}
}

type attachment struct {
	conn net.Conn
	// ended is closed once the attachment no longer holds any role.
	ended chan struct{}
}

// writerGrace is how long a new stdin writer waits for the current one
// to go away before being refused: a client that detaches and attaches
// again at once must not race its own old connection.
const writerGrace = 500 * time.Millisecond

// Supervise runs one session to its end: it starts the command, records
// its state, and serves the session's socket until the command has ended
// and its attachers have read everything (or Linger has passed). A
// launch that fails is an outcome recorded in meta.json, not an error;
// errors are for a supervisor that could not do its job at all.
func Supervise(ctx context.Context, opts SuperviseOptions) error {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	readyOnce := sync.OnceFunc(func() {
		if opts.Ready != nil {
			opts.Ready.Close()
		}
	})
	defer readyOnce()
	var spec launchSpec
	if err := json.NewDecoder(io.LimitReader(opts.Spec, maxMetaBytes)).Decode(&spec); err != nil {
		return fmt.Errorf("read launch spec: %w", err)
	}
	if err := ValidateRef(spec.Session.ID); err != nil || filepath.Base(opts.Dir) != spec.Session.ID {
		return fmt.Errorf("launch spec: session id %q does not match %s", spec.Session.ID, opts.Dir)
	}
	lock, err := takeLock(opts.Dir)
	if err != nil {
		return err
	}
	defer lock.Close()

	sv := &supervisor{
		dir:    opts.Dir,
		log:    log.With("session", spec.Session.ID),
		limits: spec.Limits.withDefaults(),
		meta:   spec.Session,
		done:   make(chan struct{}),
	}
	sv.meta.SupervisorPID = os.Getpid()

	sock := filepath.Join(opts.Dir, socketFile)
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return sv.fail(api.ExitStatus{Code: 126}, fmt.Errorf("listen: %w", err))
	}
	defer os.Remove(sock)
	defer ln.Close()

	sigs := make(chan os.Signal, 4)
	// The supervisor has no terminal, but a stray SIGHUP must not kill it;
	// TERM and INT (a guest shutdown) go on to the command. Handling them
	// before the launch also matters: a signal the supervisor inherited
	// as ignored would stay ignored in the command, while a handled one
	// is reset to its default at exec.
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	if err := sv.launch(spec, opts.Start); err != nil {
		return sv.fail(launchFailureStatus(err), err)
	}
	go sv.accept(ln)
	go sv.wait()

	go func() {
		for {
			select {
			case sig := <-sigs:
				if sig != syscall.SIGHUP {
					_ = sv.signal(sig.(syscall.Signal))
				}
			case <-ctx.Done():
				sv.stop(DefaultStopTimeout)
				return
			case <-sv.done:
				return
			}
		}
	}()

	select {
	case <-sv.done:
	case <-time.After(sv.limits.LaunchWindow):
	}
	readyOnce()
	<-sv.done

	// Let attachers finish reading, but not forever: after the supervisor
	// is gone the Manager replays from the logs on disk.
	deadline := time.Now().Add(sv.limits.Linger)
	for time.Now().Before(deadline) {
		sv.mu.Lock()
		n := sv.active
		sv.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	sv.log.Info("supervisor done")
	return nil
}

// fail records a launch that did not happen.
func (sv *supervisor) fail(st api.ExitStatus, err error) error {
	now := time.Now().UTC()
	sv.meta.State = api.SessionFailed
	sv.meta.Error = err.Error()
	sv.meta.EndedAt = &now
	st.Error = err.Error()
	sv.meta.Exit = &st
	sv.log.Info("session launch failed", "err", err)
	return writeMeta(sv.dir, sv.meta)
}

// launchFailureStatus uses the shell's codes: 127 not found, 126 not
// executable.
func launchFailureStatus(err error) api.ExitStatus {
	if errors.Is(err, fs.ErrNotExist) {
		return api.ExitStatus{Code: 127}
	}
	return api.ExitStatus{Code: 126}
}

// launch creates the logs and the command's pipes or terminal and starts
// it. The command gets its own process group (its own session with a
// terminal) so signals reach it and its children together.
func (sv *supervisor) launch(spec launchSpec, start StartFunc) error {
	m := spec.Session
	var files, childEnds, parentEnds []*os.File
	started := false
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
		if !started {
			for _, f := range parentEnds {
				f.Close()
			}
		}
	}()
	var sys *syscall.SysProcAttr
	newLog := func(name string, typ mux.Type) error {
		l, err := createLog(filepath.Join(sv.dir, name), sv.limits.LogBytes, sv.limits.StallTimeout)
		if err != nil {
			return err
		}
		sv.logs = append(sv.logs, l)
		sv.types = append(sv.types, typ)
		return nil
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("create pipe: %w", err)
		}
		// A bigger pipe means fewer, larger reads by pump: under TCG
		// every system call is expensive. Best effort: the default
		// 64 KiB works too.
		_, _ = unix.FcntlInt(r.Fd(), unix.F_SETPIPE_SZ, 1<<20)
		return r, w, nil
	}
	if m.Mode == api.SessionModePTY {
		if err := newLog(outputLog, mux.Stdout); err != nil {
			return err
		}
		master, tty, err := pty.Open(spec.Rows, spec.Cols)
		if err != nil {
			return err
		}
		sv.master = master
		sv.outputs = []*os.File{master}
		parentEnds = append(parentEnds, master)
		childEnds = append(childEnds, tty)
		files = []*os.File{tty, tty, tty}
		// Ctty is the child's descriptor 0, the terminal.
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	} else {
		if err := newLog(stdoutLog, mux.Stdout); err != nil {
			return err
		}
		if err := newLog(stderrLog, mux.Stderr); err != nil {
			return err
		}
		files = make([]*os.File, 3)
		r, w, err := pipe()
		if err != nil {
			return err
		}
		sv.stdin, files[0] = w, r
		parentEnds, childEnds = append(parentEnds, w), append(childEnds, r)
		for i := 1; i <= 2; i++ {
			r, w, err := pipe()
			if err != nil {
				return err
			}
			sv.outputs = append(sv.outputs, r)
			files[i] = w
			parentEnds, childEnds = append(parentEnds, r), append(childEnds, w)
		}
		sys = &syscall.SysProcAttr{Setpgid: true}
	}
	argv := append([]string{m.Command}, m.Args...)
	proc, err := start(m.Path, argv, spec.Env, m.Cwd, files, sys)
	if err != nil {
		return fmt.Errorf("start %s: %w", m.Command, err)
	}
	started = true
	sv.mu.Lock()
	defer sv.mu.Unlock()
	sv.proc = proc
	sv.meta.PID = proc.Pid
	sv.meta.State = api.SessionRunning
	sv.meta.StartedAt = time.Now().UTC()
	sv.log.Info("session started", "pid", proc.Pid, "command", m.Command, "mode", m.Mode)
	if err := writeMeta(sv.dir, sv.meta); err != nil {
		sv.log.Warn("record running state", "err", err)
	}
	return nil
}

// wait reaps the command, drains its output into the logs and records
// how it ended.
func (sv *supervisor) wait() {
	var quiet atomic.Bool
	var pumps sync.WaitGroup
	for i, f := range sv.outputs {
		pumps.Go(func() { sv.pump(f, sv.logs[i], &quiet) })
	}
	ps, err := sv.proc.Wait()
	sv.mu.Lock()
	sv.reaped = true
	sv.mu.Unlock()
	quiet.Store(true)
	for _, f := range sv.outputs {
		_ = f.SetReadDeadline(time.Now().Add(outputGrace))
	}
	pumps.Wait()
	for _, l := range sv.logs {
		l.Close()
	}
	sv.closeStdin()
	for _, f := range sv.outputs {
		f.Close()
	}

	st := ExitStatus(ps, err)
	sv.mu.Lock()
	now := time.Now().UTC()
	sv.meta.Exit = &st
	sv.meta.EndedAt = &now
	sv.meta.State = api.SessionExited
	if st.Code != 0 && !sv.stopping && now.Sub(sv.meta.StartedAt) < sv.limits.LaunchWindow {
		sv.meta.State = api.SessionFailed
		sv.meta.Error = fmt.Sprintf("%s exited with status %d within %s of starting", sv.meta.Command, st.Code, sv.limits.LaunchWindow)
		// The last log is stderr in pipe mode and the terminal in PTY mode.
		sv.meta.StderrHead = sv.logs[len(sv.logs)-1].head(stderrHeadLines, stderrHeadBytes)
	}
	if err := writeMeta(sv.dir, sv.meta); err != nil {
		sv.log.Warn("record exit", "err", err)
	}
	sv.mu.Unlock()
	sv.log.Info("session ended", "code", st.Code, "signal", st.Signal)
	close(sv.done)
}

// pumpBuffer bounds one read of a command's output, and so how far a log
// may pass its size limit before rotating.
const pumpBuffer = 256 << 10

// pump copies one output of the command into its log. Log writes block
// while a slow attacher holds a rotation back, which fills the pipe and
// blocks the command: that is the backpressure.
func (sv *supervisor) pump(f *os.File, l *streamLog, quiet *atomic.Bool) {
	buf := make([]byte, pumpBuffer)
	warned := false
	for {
		if quiet.Load() {
			_ = f.SetReadDeadline(time.Now().Add(outputGrace))
		}
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := l.Write(buf[:n]); werr != nil && !warned {
				// Keep draining: a command blocked on a full pipe is worse
				// than a gap in its log.
				sv.log.Warn("session log", "err", werr)
				warned = true
			}
		}
		if err != nil {
			// EOF: every writer closed; EIO: the terminal's last holder
			// closed it; a deadline: the command exited and went quiet.
			return
		}
	}
}

// signal sends sig to the command's process group, unless the command is
// already reaped (its pid may then belong to someone else).
func (sv *supervisor) signal(sig syscall.Signal) error {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.reaped || sv.proc == nil {
		return conflictf("", "session %s has exited", sv.meta.Name)
	}
	// Setpgid and Setsid both make the leader's pid the group id.
	if err := syscall.Kill(-sv.proc.Pid, sig); err != nil {
		return internalf("signal session %s: %v", sv.meta.Name, err)
	}
	return nil
}

// stop sends SIGTERM now and SIGKILL after timeout unless the command
// ended; the KILL does not depend on whoever asked staying connected.
func (sv *supervisor) stop(timeout time.Duration) {
	sv.mu.Lock()
	sv.stopping = true
	sv.mu.Unlock()
	if sv.signal(syscall.SIGTERM) != nil {
		return
	}
	go func() {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-sv.done:
		case <-t.C:
			sv.log.Info("session did not stop after SIGTERM; killing it", "timeout", timeout)
			_ = sv.signal(syscall.SIGKILL)
		}
	}()
}

func (sv *supervisor) writeStdin(p []byte) {
	if sv.master != nil {
		_, _ = sv.master.Write(p)
		return
	}
	sv.stdinMu.Lock()
	f := sv.stdin
	sv.stdinMu.Unlock()
	if f != nil {
		// Errors mean the command closed its stdin or exited: input
		// has nowhere to go.
		_, _ = f.Write(p)
	}
}

// closeStdin ends the command's input. A terminal has no half-close: the
// line discipline turns ^D into end of input, as when a person types it.
func (sv *supervisor) closeStdin() {
	if sv.master != nil {
		sv.mu.Lock()
		reaped := sv.reaped
		sv.mu.Unlock()
		if !reaped {
			_, _ = sv.master.Write([]byte{veof})
		}
		return
	}
	sv.stdinMu.Lock()
	f := sv.stdin
	sv.stdin = nil
	sv.stdinMu.Unlock()
	if f != nil {
		// Closing also wakes a Write blocked on a command not reading.
		f.Close()
	}
}

func (sv *supervisor) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		sv.mu.Lock()
		sv.active++
		sv.mu.Unlock()
		go func() {
			defer func() {
				c.Close()
				sv.mu.Lock()
				sv.active--
				sv.mu.Unlock()
			}()
			sv.serve(c)
		}()
	}
}

func (sv *supervisor) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(requestTimeout))
	br := bufio.NewReader(c)
	line, err := readLine(br)
	if err != nil {
		return
	}
	req, err := decodeRequest(line)
	if err != nil {
		_ = writeLine(c, reply{Error: api.AsError(err)})
		return
	}
	_ = c.SetDeadline(time.Time{})
	switch req.Op {
	case opSignal:
		if err := sv.signal(syscall.Signal(req.Signal)); err != nil {
			_ = writeLine(c, reply{Error: api.AsError(err)})
			return
		}
		_ = writeLine(c, reply{Session: sv.snapshot()})
	case opStop:
		timeout := time.Duration(req.TimeoutMS) * time.Millisecond
		if timeout <= 0 {
			timeout = DefaultStopTimeout
		}
		sv.stop(timeout)
		<-sv.done
		_ = writeLine(c, reply{Session: sv.snapshot()})
	case opAttach:
		sv.attach(c, br, req.Attach)
	}
}

func (sv *supervisor) snapshot() *api.Session {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	m := sv.meta
	return &m
}

func (sv *supervisor) attach(c net.Conn, br *bufio.Reader, a api.AttachSessionRequest) {
	att := &attachment{conn: c, ended: make(chan struct{})}
	sv.mu.Lock()
	if a.Stdin && sv.writer != nil && !a.StealStdin {
		ended := sv.writer.ended
		sv.mu.Unlock()
		select {
		case <-ended:
		case <-time.After(writerGrace):
		}
		sv.mu.Lock()
	}
	if a.Stdin {
		if sv.writer != nil && !a.StealStdin {
			name := sv.meta.Name
			sv.mu.Unlock()
			_ = writeLine(c, reply{Error: &api.Error{
				Code:    api.CodeConflict,
				Message: fmt.Sprintf("session %s already has a stdin writer attached", name),
				Hint:    "attach with --no-stdin to watch, or --steal-stdin to take stdin over",
			}})
			return
		}
		if sv.writer != nil {
			sv.log.Info("stdin taken over by a new attacher")
		}
		sv.writer = att
	}
	sv.mu.Unlock()
	defer func() {
		sv.mu.Lock()
		if sv.writer == att {
			sv.writer = nil
		}
		sv.mu.Unlock()
		close(att.ended)
	}()
	if sv.master != nil && a.Rows > 0 && a.Cols > 0 {
		if err := pty.SetSize(sv.master, a.Rows, a.Cols); err != nil {
			sv.log.Debug("resize", "err", err)
		}
	}
	drop := func() {
		sv.log.Info("attacher too slow: disconnected", "stall", sv.limits.StallTimeout)
		c.Close()
	}
	cursors := startCursors(sv.logs, a, drop)
	defer func() {
		for i, cur := range cursors {
			sv.logs[i].removeCursor(cur)
		}
	}()
	if err := writeLine(c, reply{Session: sv.snapshot()}); err != nil {
		return
	}
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		sv.readClient(att, mux.NewReader(br))
	}()
	exit := func() api.ExitStatus {
		sv.mu.Lock()
		defer sv.mu.Unlock()
		return *sv.meta.Exit
	}
	_ = sendOutput(c, sv.logs, sv.types, cursors, gone, sv.done, exit)
}

// startCursors places an attacher in every log at its replay point.
func startCursors(logs []*streamLog, a api.AttachSessionRequest, drop func()) []*cursor {
	cursors := make([]*cursor, len(logs))
	for i, l := range logs {
		var off int64
		switch {
		case a.FromStart:
			off = 0 // clamped to the oldest output kept
		case a.Tail > 0:
			off = l.tailOffset(a.Tail)
		default:
			off, _, _ = l.state()
		}
		cursors[i] = l.newCursor(off, drop)
	}
	return cursors
}

// readClient applies an attacher's frames until its stream ends. Only the
// stdin writer's input reaches the command.
func (sv *supervisor) readClient(att *attachment, r *mux.Reader) {
	isWriter := func() bool {
		sv.mu.Lock()
		defer sv.mu.Unlock()
		return sv.writer == att
	}
	mux.ServeInput(r, mux.Input{
		Stdin: func(p []byte) {
			if isWriter() {
				sv.writeStdin(p)
			}
		},
		StdinClose: func() {
			if isWriter() {
				sv.closeStdin()
			}
		},
		Resize: func(rows, cols uint16) {
			if sv.master != nil {
				if err := pty.SetSize(sv.master, rows, cols); err != nil {
					sv.log.Debug("resize", "err", err)
				}
			}
		},
		Signal: func(sig int) { _ = sv.signal(syscall.Signal(sig)) },
	})
}

// sendOutput sends each log from its cursor as data frames, following the
// logs live, and the exit status once done is closed and everything was
// sent. It returns when the attacher is gone (gone closed or a write
// failed). Replay from the supervisor and from disk share it.
func sendOutput(c net.Conn, logs []*streamLog, types []mux.Type, cursors []*cursor, gone, done <-chan struct{}, exit func() api.ExitStatus) error {
	w := mux.NewWriter(c)
	// Large frames: each costs system calls on both guest sockets.
	buf := make([]byte, 256<<10)
	changed := make([]<-chan struct{}, 2)
	for {
		progressed := false
		for i, l := range logs {
			// Take the channel before reading: a write after the read
			// then still wakes the wait below.
			_, _, changed[i] = l.state()
			n, err := l.read(cursors[i], buf)
			if err != nil {
				return err
			}
			if n > 0 {
				if err := w.WriteFrame(types[i], buf[:n]); err != nil {
					return err
				}
				progressed = true
			}
		}
		if progressed {
			continue
		}
		select {
		case <-done:
			if err := w.WriteExit(exit()); err != nil {
				return err
			}
			// Half-close and let the client close first, so it reads the
			// exit frame before it sees the connection end.
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			select {
			case <-gone:
			case <-time.After(exitAckTimeout):
			}
			return nil
		default:
		}
		select {
		case <-changed[0]:
		case <-changed[1]:
		case <-gone:
			return nil
		case <-done:
		}
	}
}
