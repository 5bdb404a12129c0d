package vmmfake

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/mux"
)

// DialAgent implements vmm.Driver. A running VMM whose guest booted
// serves the guest agent over an in-process pipe: the real agent's
// health route, and an exec that runs nothing (see guestExec). A guest
// that hangs or stalls takes the connection and never answers, as a VMM
// whose guest has not opened its end does. No VMM, no connection.
func (f *Driver) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	f.mu.Lock()
	p := f.current[dir]
	f.mu.Unlock()
	if p == nil || !f.running(p) {
		return nil, fmt.Errorf("dial agent of %s: %w", dir, errRefused)
	}
	host, guest := net.Pipe()
	// The connection goes with the VMM.
	stop := context.AfterFunc(p.guest, func() { guest.Close() })
	go func() {
		defer stop()
		defer guest.Close()
		if p.boot != BootOK {
			_, _ = io.Copy(io.Discard, guest)
			return
		}
		f.serveGuest(p, guest)
	}()
	return host, nil
}

// serveGuest runs one agent session on conn, as agent.Server.ServeConn
// does, with the fake's routes.
func (f *Driver) serveGuest(p *proc, conn net.Conn) {
	linked, err := mux.LinkGuest(p.guest, conn)
	if err != nil {
		return
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Server(linked, cfg)
	if err != nil {
		return
	}
	defer sess.Close()
	f.mu.Lock()
	p.sess = sess
	f.mu.Unlock()
	hs := &http.Server{Handler: f.guestRoutes(p), ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug)}
	defer hs.Close()
	_ = hs.Serve(sess)
}

// OpenGuestStream opens a guest-initiated stream on the latest agent
// session of the VM in dir, as the agent's egress listener does.
func (f *Driver) OpenGuestStream(dir string) (net.Conn, error) {
	f.mu.Lock()
	p := f.current[dir]
	var sess *yamux.Session
	if p != nil {
		sess = p.sess
	}
	f.mu.Unlock()
	if sess == nil || sess.IsClosed() {
		return nil, fmt.Errorf("open guest stream of %s: %w", dir, errRefused)
	}
	return sess.OpenStream()
}

// guestRoutes serves the real agent's health answer and the fake exec.
// Nothing else: the real agent's other routes run commands, and this
// "guest" is the test's host.
func (f *Driver) guestRoutes(p *proc) http.Handler {
	f.mu.Lock()
	if f.agent == nil {
		log := f.Log
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		f.agent = agent.NewServer(log)
	}
	real := f.agent.Handler()
	f.mu.Unlock()
	m := http.NewServeMux()
	m.Handle("GET "+agentapi.AgentHealthPath, real)
	m.HandleFunc("POST "+agentapi.AgentExecPath, func(w http.ResponseWriter, r *http.Request) { f.guestExec(p, w, r) })
	m.HandleFunc("POST "+agentapi.AgentIdentityPath, func(w http.ResponseWriter, r *http.Request) { f.guestIdentity(p, w, r) })
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not served by the fake guest: "+r.Method+" "+r.URL.Path, http.StatusNotImplemented)
	})
	return m
}

// guestExec answers an exec without running anything. `systemctl
// poweroff` succeeds and, when guests honour it, the VMM exits once the
// answer is out; every other command exits 127.
func (f *Driver) guestExec(p *proc, w http.ResponseWriter, r *http.Request) {
	req, err := agent.DecodeExecRequest(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	poweroff := len(req.Argv) >= 2 && req.Argv[0] == "systemctl" && req.Argv[1] == "poweroff"
	st := api.ExitStatus{Code: 127, Error: "the fake guest runs no commands"}
	if poweroff {
		f.record("poweroff %s", p.id)
		st = api.ExitStatus{}
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n"); err != nil {
		return
	}
	_ = mux.NewWriter(conn).WriteExit(st)
	f.mu.Lock()
	honour := f.poweroff == PoweroffHonour
	f.mu.Unlock()
	if poweroff && honour {
		// The shutdown follows the answer, as systemctl --no-block
		// returns before it: once the client has read it and hung up.
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, conn)
		f.exit(p)
	}
}
