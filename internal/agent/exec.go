package agent

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/httpjson"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/pty"
	"github.com/bangerdev/banger/internal/session"
)

// outputGrace is how long the output of an exited command may stay quiet
// before the drain stops. Output the command wrote before exiting is
// already in the pipe and unaffected; this only bounds the wait for
// background children that inherited stdout and keep it open.
const outputGrace = 250 * time.Millisecond

// veof is what a terminal reads as end of input (^D).
const veof = 0x04

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	if !upgradeRequested(r.Header) {
		httpjson.WriteStatusError(w, http.StatusBadRequest, "exec needs a protocol upgrade",
			"send `Connection: Upgrade` and `Upgrade: "+api.MuxProtocol+"`")
		return
	}
	req, err := DecodeExecRequest(http.MaxBytesReader(w, r.Body, api.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpjson.WriteStatusError(w, http.StatusRequestEntityTooLarge, "exec request larger than 1 MiB", "pass big inputs on stdin")
			return
		}
		httpjson.WriteStatusError(w, http.StatusBadRequest, err.Error(), `send a JSON exec request such as {"argv":["uname","-a"]}`)
		return
	}
	dir := req.Dir
	if dir == "" {
		dir = s.defaultDir
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		httpjson.WriteStatusError(w, http.StatusBadRequest, "working directory "+dir+" does not exist in the guest", "pass an existing directory")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Warn("exec: hijack failed", "err", err)
		return
	}
	defer conn.Close()
	// The server's header deadline must not cut a long-running command.
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n"); err != nil {
		return
	}
	// brw.Reader may already hold frames the client sent right after
	// the body.
	s.runExec(conn, brw.Reader, req, dir)
}

// upgradeRequested checks for Connection: Upgrade and our protocol token.
func upgradeRequested(h http.Header) bool {
	upgrade := false
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				upgrade = true
			}
		}
	}
	return upgrade && strings.EqualFold(strings.TrimSpace(h.Get("Upgrade")), api.MuxProtocol)
}

// execution is one running command and the descriptors the agent holds
// for it.
type execution struct {
	log *slog.Logger
	cmd *exec.Cmd
	// master is the terminal (TTY mode): output, input and resizes.
	master *os.File
	// stdin is the write end of the command's stdin pipe, when the
	// request asked for stdin without a terminal.
	stdin   *os.File
	outputs []output
	// wantStdin: StdinClose on a terminal types ^D only when the client
	// said it sends stdin at all.
	wantStdin bool

	mu     sync.Mutex
	exited bool // the leader is reaped: no more signals to its pid
	// quiet is set once the command exited: drains stop after outputGrace
	// without data.
	quiet atomic.Bool
}

type output struct {
	f   *os.File
	typ mux.Type
}

func (s *Server) runExec(conn net.Conn, br *bufio.Reader, req api.ExecRequest, dir string) {
	w := mux.NewWriter(conn)
	x, err := startCommand(req, dir)
	if err != nil {
		se := execFailure(req.Argv[0], err)
		s.log.Info("exec could not start", "argv0", req.Argv[0], "code", se.code, "err", se.msg)
		_ = w.WriteExit(api.ExitStatus{Code: se.code, Error: se.msg})
		return
	}
	defer x.closeFiles()
	s.execs.Add(1)
	defer s.execs.Add(-1)
	x.log = s.log.With("pid", x.cmd.Process.Pid)
	x.log.Info("exec started", "argv0", req.Argv[0], "tty", req.TTY)

	clientGone := make(chan struct{})
	var goneOnce sync.Once
	gone := func() { goneOnce.Do(func() { close(clientGone) }) }
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-clientGone:
			// Frame writes blocked on a peer that no longer reads
			// (output still draining) must fail instead of waiting.
			_ = conn.SetWriteDeadline(time.Now())
		case <-finished:
		}
	}()

	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		x.readClient(mux.NewReader(br))
		gone()
	}()
	var drains sync.WaitGroup
	for _, o := range x.outputs {
		drains.Go(func() {
			if err := x.drain(o, w); err != nil {
				gone()
			}
		})
	}

	waitc := make(chan error, 1)
	go func() { waitc <- x.cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-waitc:
	case <-clientGone:
		// Nobody will read the output or send the end of stdin: the
		// command would otherwise run (or block) forever.
		x.log.Info("exec client went away; killing its process group")
		x.signal(syscall.SIGKILL)
		waitErr = <-waitc
	}
	x.mu.Lock()
	x.exited = true
	x.mu.Unlock()
	x.quiet.Store(true)
	deadline := time.Now().Add(outputGrace)
	for _, o := range x.outputs {
		_ = o.f.SetReadDeadline(deadline)
	}
	// All output goes out before the exit frame.
	drains.Wait()

	st := session.ExitStatus(x.cmd.ProcessState, waitErr)
	x.log.Info("exec finished", "code", st.Code, "signal", st.Signal)
	_ = w.WriteExit(st)
	// Wake the frame reader; the client closes its end after the exit
	// frame, but the agent must not depend on it.
	_ = conn.SetReadDeadline(time.Now())
	x.closeFiles()
	<-readerDone
}

// startCommand starts req in its own process group (its own session with
// a terminal), so signals reach the command and its children together.
func startCommand(req api.ExecRequest, dir string) (*execution, error) {
	env := commandEnv(req)
	path, err := lookPath(req.Argv[0], envValue(env, "PATH"), dir)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: req.Argv, Env: env, Dir: dir}
	x := &execution{cmd: cmd, wantStdin: req.Stdin}
	// childEnds are the descriptors only the child keeps: the parent
	// closes them whether or not the child started.
	var childEnds []*os.File
	started := false
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
		if !started {
			x.closeFiles()
		}
	}()

	if req.TTY {
		master, tty, err := pty.Open(req.Rows, req.Cols)
		if err != nil {
			return nil, err
		}
		x.master = master
		x.outputs = []output{{master, mux.Stdout}}
		childEnds = append(childEnds, tty)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		// Ctty is the child's fd 0, the terminal.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	} else {
		for _, typ := range []mux.Type{mux.Stdout, mux.Stderr} {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, err
			}
			x.outputs = append(x.outputs, output{r, typ})
			childEnds = append(childEnds, w)
		}
		cmd.Stdout, cmd.Stderr = childEnds[0], childEnds[1]
		if req.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, err
			}
			x.stdin = w
			childEnds = append(childEnds, r)
			cmd.Stdin = r
		}
		// Without Stdin the child reads /dev/null (exec's default).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	started = true
	return x, nil
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// closeFiles releases the agent's descriptors; it is idempotent, and
// closing wakes any goroutine blocked on them.
func (x *execution) closeFiles() {
	if x.master != nil {
		x.master.Close()
	}
	if x.stdin != nil {
		x.stdin.Close()
	}
	for _, o := range x.outputs {
		o.f.Close()
	}
}

// drain copies one output into frames. Frame writes block while the
// client does not read, so a fast command waits on its full pipe instead
// of the agent buffering. It returns an error only when the client is gone.
func (x *execution) drain(o output, w *mux.Writer) error {
	buf := make([]byte, 32<<10)
	sw := w.Stream(o.typ)
	for {
		if x.quiet.Load() {
			_ = o.f.SetReadDeadline(time.Now().Add(outputGrace))
		}
		n, err := o.f.Read(buf)
		if n > 0 {
			if _, werr := sw.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			// EOF: every writer closed; EIO: the terminal's last holder
			// closed it; a deadline: the command exited and went quiet.
			return nil
		}
	}
}

// readClient applies the client's frames until the stream fails or ends.
func (x *execution) readClient(r *mux.Reader) {
	stdinOpen := true
	mux.ServeInput(r, mux.Input{
		Stdin: func(p []byte) {
			if stdinOpen && x.writeStdin(p) != nil {
				// The command stopped reading (exited or closed stdin):
				// drop further input, but keep serving signals.
				stdinOpen = false
			}
		},
		StdinClose: func() {
			if stdinOpen {
				x.closeStdin()
				stdinOpen = false
			}
		},
		Resize: func(rows, cols uint16) {
			if x.master != nil {
				if err := pty.SetSize(x.master, rows, cols); err != nil {
					x.log.Debug("resize", "err", err)
				}
			}
		},
		Signal: func(sig int) { x.signal(syscall.Signal(sig)) },
		Other:  func(t mux.Type) { x.log.Debug("exec: ignoring frame from client", "type", t) },
	})
}

func (x *execution) writeStdin(p []byte) error {
	switch {
	case x.master != nil:
		_, err := x.master.Write(p)
		return err
	case x.stdin != nil:
		_, err := x.stdin.Write(p)
		return err
	}
	return nil
}

// closeStdin ends the command's input. A terminal has no half-close: the
// line discipline turns ^D into end of input, as when a person types it.
func (x *execution) closeStdin() {
	switch {
	case x.master != nil:
		if x.wantStdin {
			_, _ = x.master.Write([]byte{veof})
		}
	case x.stdin != nil:
		x.stdin.Close()
	}
}

// signal sends sig to the command's process group, unless the leader is
// already reaped (its pid may then belong to someone else).
func (x *execution) signal(sig syscall.Signal) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.exited {
		return
	}
	// Setpgid and Setsid both make the leader's pid the group id.
	if err := syscall.Kill(-x.cmd.Process.Pid, sig); err != nil {
		x.log.Debug("signal process group", "signal", sig, "err", err)
	}
}
