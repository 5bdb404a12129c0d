package agent

// Guest sessions (see internal/session): the agent preflights and
// launches them, and serves them over HTTP:
//
//	POST   /v1/sessions                api.StartSessionRequest → 201 api.Session
//	GET    /v1/sessions                → []api.Session, oldest first
//	GET    /v1/sessions/{ref}          → api.Session ({ref}: id or name)
//	DELETE /v1/sessions/{ref}          remove an ended session → 204
//	POST   /v1/sessions/{ref}/attach   api.AttachSessionRequest → 101, mux frames
//	POST   /v1/sessions/{ref}/signal   api.SignalSessionRequest → api.Session
//	POST   /v1/sessions/{ref}/stop     api.StopSessionRequest → api.Session (ended)
//	GET    /v1/sessions/{ref}/logs     ?stream=stdout|stderr&tail=N&follow=1 → raw bytes
//
// Errors are the usual `{"error":{...}}` body: 400 invalid (preflight),
// 404 unknown session, 409 name taken / stdin taken / session ended.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/httpjson"
	"github.com/bangerdev/banger/internal/session"
)

// Where sessions live and how supervisors start; tests replace them.
var (
	sessionsDir = session.DefaultDir
	// supervisorExe is re-executed as `supervise`: the agent's own binary,
	// even if the file was replaced since it started.
	supervisorExe = "/proc/self/exe"
	sessionLimits session.Limits
)

func (s *Server) sessionManager() *session.Manager {
	var bootID string
	if b, err := os.ReadFile(s.procDir + "/sys/kernel/random/boot_id"); err == nil {
		bootID = strings.TrimSpace(string(b))
	}
	return session.NewManager(session.Options{
		Dir:        sessionsDir,
		Launch:     launchSupervisor,
		BaseEnv:    baseEnv,
		DefaultCwd: s.defaultDir,
		BootID:     bootID,
		Limits:     sessionLimits,
		Log:        s.log,
	})
}

// registerSessionRoutes adds the session routes. The Manager is
// stateless (everything is in the state directory), so each host session
// getting its own is fine.
func (s *Server) registerSessionRoutes(routes *http.ServeMux) {
	m := s.sessionManager()
	p := agentapi.AgentSessionsPath
	routes.HandleFunc("POST "+p, func(w http.ResponseWriter, r *http.Request) {
		req, err := session.DecodeStartRequest(http.MaxBytesReader(w, r.Body, api.MaxBodyBytes))
		if err != nil {
			httpjson.WriteError(w, err)
			return
		}
		sess, err := m.Start(r.Context(), req)
		if err != nil {
			httpjson.WriteError(w, err)
			return
		}
		httpjson.WriteJSON(w, http.StatusCreated, sess)
	})
	routes.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) {
		ss, err := m.List(r.Context())
		if err != nil {
			httpjson.WriteError(w, err)
			return
		}
		httpjson.WriteJSON(w, http.StatusOK, ss)
	})
	routes.HandleFunc("GET "+p+"/{ref}", func(w http.ResponseWriter, r *http.Request) {
		sess, err := m.Get(r.Context(), r.PathValue("ref"))
		if err != nil {
			httpjson.WriteError(w, err)
			return
		}
		httpjson.WriteJSON(w, http.StatusOK, sess)
	})
	routes.HandleFunc("DELETE "+p+"/{ref}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Remove(r.Context(), r.PathValue("ref")); err != nil {
			httpjson.WriteError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	routes.HandleFunc("POST "+p+"/{ref}/signal", func(w http.ResponseWriter, r *http.Request) {
		var req api.SignalSessionRequest
		if err := httpjson.DecodeOptionalBody(r, &req); err != nil {
			httpjson.WriteError(w, err)
			return
		}
		ref := r.PathValue("ref")
		if err := m.Signal(r.Context(), ref, req.Signal); err != nil {
			httpjson.WriteError(w, err)
			return
		}
		sess, err := m.Get(r.Context(), ref)
		if err != nil {
			httpjson.WriteError(w, err)
			return
		}
		httpjson.WriteJSON(w, http.StatusOK, sess)
	})
	routes.HandleFunc("POST "+p+"/{ref}/stop", func(w http.ResponseWriter, r *http.Request) {
		var req api.StopSessionRequest
		if err := httpjson.DecodeOptionalBody(r, &req); err != nil {
			httpjson.WriteError(w, err)
			return
		}
		if req.TimeoutSeconds < 0 || req.TimeoutSeconds > 24*3600 {
			httpjson.WriteError(w, api.Errorf(api.CodeInvalid, "", "stop timeout %gs out of range", req.TimeoutSeconds))
			return
		}
		timeout := time.Duration(req.TimeoutSeconds * float64(time.Second))
		sess, err := m.Stop(r.Context(), r.PathValue("ref"), timeout)
		if err != nil {
			httpjson.WriteError(w, err)
			return
		}
		httpjson.WriteJSON(w, http.StatusOK, sess)
	})
	routes.HandleFunc("GET "+p+"/{ref}/logs", func(w http.ResponseWriter, r *http.Request) {
		s.handleSessionLogs(m, w, r)
	})
	routes.HandleFunc("POST "+p+"/{ref}/attach", func(w http.ResponseWriter, r *http.Request) {
		s.handleSessionAttach(m, w, r)
	})
}

func (s *Server) handleSessionAttach(m *session.Manager, w http.ResponseWriter, r *http.Request) {
	if !upgradeRequested(r.Header) {
		httpjson.WriteError(w, api.Errorf(api.CodeInvalid, "send `Connection: Upgrade` and `Upgrade: "+api.MuxProtocol+"`", "attach needs a protocol upgrade"))
		return
	}
	var req api.AttachSessionRequest
	if err := httpjson.DecodeOptionalBody(r, &req); err != nil {
		httpjson.WriteError(w, err)
		return
	}
	// Connect to the session first, so a refusal (stdin taken, unknown
	// session) is a plain HTTP error.
	sconn, err := m.Attach(r.Context(), r.PathValue("ref"), req)
	if err != nil {
		httpjson.WriteError(w, err)
		return
	}
	defer sconn.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Warn("attach: hijack failed", "err", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n"); err != nil {
		return
	}
	// Splice the host stream and the supervisor's socket. Each side's end
	// is passed on as a half-close, which the supervisor reads as "the
	// attacher left" and the host as the end of the stream.
	go func() {
		// brw.Reader may already hold frames sent right after the body.
		_, _ = io.Copy(sconn, brw.Reader)
		closeWrite(sconn)
	}()
	// A large buffer: output frames are up to 256 KiB (see session).
	_, _ = io.CopyBuffer(struct{ io.Writer }{conn}, struct{ io.Reader }{sconn}, make([]byte, 256<<10))
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}

func (s *Server) handleSessionLogs(m *session.Manager, w http.ResponseWriter, r *http.Request) {
	req, err := api.ParseSessionLogsRequest(r.URL.Query())
	if err != nil {
		httpjson.WriteError(w, err)
		return
	}
	ref := r.PathValue("ref")
	// Errors must come before the first byte of output.
	sess, err := m.Get(r.Context(), ref)
	if err != nil {
		httpjson.WriteError(w, err)
		return
	}
	if req.Stream != "" && req.Stream != api.SessionStreamStdout && req.Stream != api.SessionStreamStderr {
		httpjson.WriteError(w, api.Errorf(api.CodeInvalid, "use stdout or stderr", "unknown stream %q", req.Stream))
		return
	}
	if req.Stream == api.SessionStreamStderr && sess.Mode == api.SessionModePTY {
		httpjson.WriteError(w, api.Errorf(api.CodeInvalid, "a terminal has one output: read stdout", "session %s runs on a terminal: it has no separate stderr", ref))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	fw := flushWriter{w: w, rc: rc}
	if err := m.Logs(r.Context(), sess.ID, req, fw); err != nil && r.Context().Err() == nil {
		s.log.Debug("session logs", "session", sess.ID, "err", err)
	}
}

// flushWriter sends followed output as it comes instead of when the
// response buffer fills.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// launchSupervisor starts `banger-agent supervise` detached: setsid puts
// it in its own session and process group, so neither a signal to the
// agent's group nor the agent's exit reaches it (with the unit's
// KillMode=process, systemd stops only the agent itself).
func launchSupervisor(dir string, files []*os.File) error {
	p, err := os.StartProcess(supervisorExe, []string{"banger-agent", "supervise", "--dir", dir}, &os.ProcAttr{
		// Not the agent's cwd: a supervisor must not pin a mount.
		Dir:   "/",
		Env:   os.Environ(),
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return err
	}
	// Reap it when it ends; if the agent goes first, init does.
	go func() { _, _ = p.Wait() }()
	return nil
}

// startProcess is the supervisor's way to start the session's command.
func startProcess(path string, argv, env []string, dir string, files []*os.File, sys *syscall.SysProcAttr) (*os.Process, error) {
	return os.StartProcess(path, argv, &os.ProcAttr{Dir: dir, Env: env, Files: files, Sys: sys})
}

// SuperviseCommand is `banger-agent supervise --dir DIR`, the per-session
// supervisor the agent launches (see launchSupervisor). Its stdin carries
// the launch spec, descriptor 3 is the ready pipe, stdout and stderr are
// its log. It returns the process's exit code.
func SuperviseCommand(args []string, stderr io.Writer, log *slog.Logger) int {
	fs := flag.NewFlagSet("banger-agent supervise", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "the session's directory")
	if fs.Parse(args) != nil || *dir == "" {
		fmt.Fprintln(stderr, "usage: banger-agent supervise --dir DIR")
		return 2
	}
	// Descriptors 0 and 3 came from the agent without close-on-exec: the
	// command must not inherit them (holding the ready pipe open would
	// make the agent wait for the command's end).
	syscall.CloseOnExec(0)
	syscall.CloseOnExec(3)
	ready := os.NewFile(3, "ready")
	err := session.Supervise(context.Background(), session.SuperviseOptions{
		Dir:   *dir,
		Spec:  os.Stdin,
		Ready: ready,
		Start: startProcess,
		Log:   log,
	})
	if err != nil {
		log.Error("supervise", "dir", *dir, "err", err)
		return 1
	}
	return 0
}
