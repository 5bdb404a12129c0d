// Package agent is banger-agent, the guest side of banger's control
// channel: an HTTP server (health, exec) spoken over a yamux session on a
// host connection, plus the boot-time identity setup (`banger-agent init`).
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/httpjson"
	"github.com/bangerdev/banger/internal/mux"
)

// Transport yields one host connection at a time: it blocks until a host
// is there (or ctx ends). Serve closes each connection when its session
// ends and then asks for the next one.
type Transport func(ctx context.Context) (io.ReadWriteCloser, error)

// Server is the agent's HTTP service.
type Server struct {
	log *slog.Logger
	// procDir is /proc; tests point it elsewhere.
	procDir string
	// defaultDir is where commands run without an explicit dir.
	defaultDir string
	// keepAlive and writeTimeout bound how long a session survives a host
	// that stopped answering; tests shorten them.
	keepAlive, writeTimeout time.Duration
	// execs counts running exec commands.
	execs atomic.Int64
	// workspaceMu serializes workspace prepares: each swaps the same
	// directory.
	workspaceMu sync.Mutex
	// hosts are the live host sessions, for the streams the guest opens
	// (egress).
	hosts hostSessions
	// identity applies POST /v1/identity; identityMu serializes it.
	identity   identitySys
	identityMu sync.Mutex
}

// NewServer returns a Server that logs to log (nil: slog.Default()).
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{log: log, procDir: "/proc", defaultDir: "/root", keepAlive: 15 * time.Second, writeTimeout: 10 * time.Second,
		identity: defaultIdentitySys()}
}

// Handler serves the agent's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+agentapi.AgentHealthPath, s.handleHealth)
	mux.HandleFunc("POST "+agentapi.AgentExecPath, s.handleExec)
	mux.HandleFunc("PUT "+agentapi.AgentFilesPath, s.handleImport)
	s.registerSessionRoutes(mux)
	mux.HandleFunc("POST "+agentapi.AgentWorkspacePath, s.handleWorkspace)
	mux.HandleFunc("POST "+agentapi.AgentWorkspaceBundlePath, s.handleWorkspaceBundle)
	mux.HandleFunc("POST "+agentapi.AgentIdentityPath, s.handleIdentity)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.WriteStatusError(w, http.StatusNotFound, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path), "this agent serves GET /healthz, POST /v1/exec, PUT /v1/files POST /v1/workspace[/bundle] and POST /v1/identity")
	})
	return mux
}

// Serve runs sessions over the host connections t yields, one after
// another, until ctx ends. A host that goes away (daemon restart) ends
// its session; the next host gets a fresh one.
func (s *Server) Serve(ctx context.Context, t Transport) error {
	var lastErr string
	retry := minRetry
	for {
		conn, err := t(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Log a persisting failure once, not at every retry.
			if msg := err.Error(); msg != lastErr {
				s.log.Warn("waiting for host connection", "err", err)
				lastErr = msg
			}
			// Reopening right after a session ends can briefly fail
			// (the port is still being released): retry fast, then
			// back off.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(retry):
			}
			retry = min(2*retry, maxRetry)
			continue
		}
		lastErr, retry = "", minRetry
		s.log.Info("host connected")
		err = s.ServeConn(ctx, conn)
		if errors.Is(err, yamux.ErrInvalidVersion) {
			// A new host's preamble ended the old session.
			s.log.Info("host session ended: a new host connected")
		} else {
			s.log.Info("host session ended", "err", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// ServeListener serves every host connection ln accepts, each in its own
// session, until ctx ends. Unlike the virtio-serial port, a vsock stream
// has exactly one peer and ends when that peer goes, so a new daemon's
// connection needs no preamble to displace an old one: sessions simply
// run side by side until the old one's stream closes.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accept host connection: %w", err)
		}
		s.log.Info("host connected", "addr", conn.RemoteAddr().String())
		go func() {
			err := s.ServeConn(ctx, conn)
			s.log.Info("host session ended", "err", err)
		}()
	}
}

// streamWindow is the yamux receive window of each stream, on both ends.
const streamWindow = 4 << 20

const (
	minRetry = 50 * time.Millisecond
	maxRetry = time.Second
)

// ServeConn runs one yamux server session with the HTTP service on conn
// until the session dies or ctx ends, and closes conn. The session starts
// after the link preamble (see mux.LinkGuest), which is what makes a new
// host get a new session even when the port never reported the old one
// leaving.
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	linked, err := mux.LinkGuest(ctx, conn)
	if err != nil {
		conn.Close()
		return err
	}
	sess, err := yamux.Server(linked, s.yamuxConfig())
	if err != nil {
		conn.Close()
		return fmt.Errorf("start yamux session: %w", err)
	}
	s.log.Debug("host session started")
	defer s.hosts.add(sess)()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(_ net.Listener) context.Context { return ctx },
	}
	// A yamux session is a net.Listener whose connections are streams.
	err = hs.Serve(sess)
	sess.Close()
	hs.Close()
	if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// OpenHostStream opens a guest-initiated stream to the host on the newest
// live host session; ErrNoHost while there is none. The egress gateway
// opens one per connection.
func (s *Server) OpenHostStream() (net.Conn, error) {
	return s.hosts.open()
}

// hostSessions tracks the yamux sessions with hosts. Under QEMU there is
// one at a time; over vsock an old daemon's session may still be ending
// when a new one starts, and the newest is the one to use.
type hostSessions struct {
	mu   sync.Mutex
	list []*yamux.Session
}

// add records sess and returns the function that forgets it.
func (h *hostSessions) add(sess *yamux.Session) func() {
	h.mu.Lock()
	h.list = append(h.list, sess)
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for i, x := range h.list {
			if x == sess {
				h.list = append(h.list[:i], h.list[i+1:]...)
				break
			}
		}
	}
}

func (h *hostSessions) open() (net.Conn, error) {
	h.mu.Lock()
	var sess *yamux.Session
	for i := len(h.list) - 1; i >= 0; i-- {
		if !h.list[i].IsClosed() {
			sess = h.list[i]
			break
		}
	}
	h.mu.Unlock()
	if sess == nil {
		return nil, ErrNoHost
	}
	st, err := sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open host stream: %w", err)
	}
	return hostStream{st}, nil
}

// hostStream is a yamux stream with the net.Conn close contract: Close
// ends both halves (pending reads fail), CloseWrite only sends FIN.
type hostStream struct{ *yamux.Stream }

func (s hostStream) CloseWrite() error { return s.Stream.Close() }

func (s hostStream) Close() error {
	err := s.Stream.Close()
	_ = s.Stream.SetReadDeadline(time.Now())
	return err
}

func (s *Server) yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	// Keepalive notices a host that vanished without the port telling
	// us, including one that died in the middle of a frame (the next
	// host's preamble would then be swallowed as payload).
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = s.keepAlive
	cfg.ConnectionWriteTimeout = s.writeTimeout
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	// A larger receive window keeps bulk uploads (workspaces, stdin)
	// flowing while the guest is busy writing what it got.
	cfg.MaxStreamWindowSize = streamWindow
	return cfg
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	h := api.AgentHealth{Version: buildinfo.Version}
	if b, err := os.ReadFile(s.procDir + "/sys/kernel/random/boot_id"); err == nil {
		h.BootID = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(s.procDir + "/uptime"); err == nil {
		h.UptimeSeconds = parseUptime(string(b))
	}
	h.Hostname, _ = os.Hostname()
	httpjson.WriteJSON(w, http.StatusOK, h)
}

// parseUptime reads the first field of /proc/uptime ("12.34 56.78").
func parseUptime(s string) float64 {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return v
}
