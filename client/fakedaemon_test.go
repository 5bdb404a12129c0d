package client_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
)

// fakeDaemon speaks enough of the daemon's API on a Unix socket for the
// examples and tests to run without VMs: one VM ("work") once created,
// guest commands echo, cat, false and sleep, a session ("job", id s1)
// that has ended and one ("live") that never does.
type fakeDaemon struct {
	socket string
	srv    *httptest.Server
	dir    string

	mu      sync.Mutex
	vms     map[string]bool
	execs   []api.ExecRequest
	attachs []api.AttachSessionRequest
	// dropped is closed when a streamed command's connection goes away
	// before the command ended (the client cancelled).
	dropped chan struct{}
}

const sessionOutput = "building...\nall tests passed\n"

// startFakeDaemon listens on a fresh socket; stop removes it. It panics
// on failure, so examples (which have no *testing.T) can use it.
func startFakeDaemon() *fakeDaemon {
	// A short directory: a Unix socket path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "bgc")
	if err != nil {
		panic(err)
	}
	f := &fakeDaemon{dir: dir, socket: filepath.Join(dir, "banger.sock"), vms: map[string]bool{}, dropped: make(chan struct{}, 4)}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		panic(err)
	}
	f.srv = httptest.NewUnstartedServer(f.routes())
	f.srv.Listener.Close()
	f.srv.Listener = ln
	f.srv.Start()
	return f
}

func (f *fakeDaemon) stop() {
	f.srv.Close()
	os.RemoveAll(f.dir)
}

func (f *fakeDaemon) lastExec() api.ExecRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.execs[len(f.execs)-1]
}

func (f *fakeDaemon) lastAttach() api.AttachSessionRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attachs[len(f.attachs)-1]
}

func (f *fakeDaemon) routes() http.Handler {
	m := http.NewServeMux()
	v := "/" + api.Version
	m.HandleFunc("GET "+v+"/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.VersionInfo{Version: "fake", Accel: "kvm"})
	})
	m.HandleFunc("POST "+v+"/vms", func(w http.ResponseWriter, r *http.Request) {
		var req api.CreateVMRequest
		if !readJSON(w, r, &req) {
			return
		}
		if req.Name == "" {
			req.Name = "work"
		}
		f.mu.Lock()
		f.vms[req.Name] = true
		f.mu.Unlock()
		writeJSON(w, http.StatusAccepted, api.OperationRef{ID: "op-create-" + req.Name})
	})
	m.HandleFunc("GET "+v+"/operations/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		kind, target, ok := strings.Cut(strings.TrimPrefix(id, "op-"), "-")
		if !ok {
			writeError(w, http.StatusNotFound, api.Errorf(api.CodeNotFound, "", "no operation %s", id))
			return
		}
		t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		stages := map[string][]string{"create": {"disk", "boot", "agent"}, "workspace": {"bundle", "unpack"}}[kind]
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		op := api.Operation{ID: id, Kind: kind, Target: target, State: api.OpSucceeded, CreatedAt: t0}
		for i, name := range stages {
			s := api.Stage{Seq: i + 1, Name: name, State: api.OpSucceeded, StartedAt: t0, FinishedAt: &t0}
			op.Stages = append(op.Stages, s)
			enc.Encode(api.Event{Stage: &s})
		}
		enc.Encode(api.Event{Done: true, Operation: &op})
	})
	m.HandleFunc("GET "+v+"/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		name, ok := f.vm(w, r)
		if ok {
			writeJSON(w, http.StatusOK, api.VM{ID: "0123abcd", Name: name, State: api.VMRunning, Image: "base", CPUs: 2})
		}
	})
	m.HandleFunc("DELETE "+v+"/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		if name, ok := f.vm(w, r); ok {
			f.mu.Lock()
			delete(f.vms, name)
			f.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		}
	})
	m.HandleFunc("POST "+v+"/vms/{name}/workspace", func(w http.ResponseWriter, r *http.Request) {
		var req api.WorkspaceRequest
		if name, ok := f.vm(w, r); ok && readJSON(w, r, &req) {
			writeJSON(w, http.StatusAccepted, api.OperationRef{ID: "op-workspace-" + name})
		}
	})
	m.HandleFunc("POST "+v+"/vms/{name}/workspace/pull", func(w http.ResponseWriter, r *http.Request) {
		var req api.PullRequest
		if name, ok := f.vm(w, r); ok && readJSON(w, r, &req) {
			writeJSON(w, http.StatusOK, api.PullResult{VM: name, Repo: "/src/app", Updated: []api.PulledRef{{
				GuestRef: "refs/heads/fix", HostRef: "refs/remotes/banger/" + name + "/fix",
				New: "5e1f00d", Log: []string{"5e1f00d fix the flaky test"},
			}}})
		}
	})
	m.HandleFunc("POST "+v+"/vms/{name}/sessions", func(w http.ResponseWriter, r *http.Request) {
		var req api.StartSessionRequest
		if _, ok := f.vm(w, r); ok && readJSON(w, r, &req) {
			writeJSON(w, http.StatusOK, api.Session{ID: "s1", Name: req.Name, Command: req.Argv[0], Args: req.Argv[1:],
				Cwd: "/root/repo", Mode: api.SessionModePipe, State: api.SessionRunning, PID: 42})
		}
	})
	m.HandleFunc("POST "+v+"/vms/{name}/sessions/{ref}/attach", func(w http.ResponseWriter, r *http.Request) {
		var req api.AttachSessionRequest
		if _, ok := f.vm(w, r); !ok || !readJSON(w, r, &req) {
			return
		}
		ref := r.PathValue("ref")
		if ref != "s1" && ref != "job" && ref != "live" {
			writeError(w, http.StatusNotFound, api.Errorf(api.CodeNotFound, "list sessions with `banger vm session list`", "no session %s", ref))
			return
		}
		f.mu.Lock()
		f.attachs = append(f.attachs, req)
		f.mu.Unlock()
		f.upgrade(w, r, func(rd *mux.Reader, wr *mux.Writer) {
			if req.FromStart {
				wr.Stream(mux.Stdout).Write([]byte(sessionOutput))
			}
			if ref == "live" {
				// A session that never ends: output goes on until the
				// client detaches.
				f.waitDrop(rd)
				return
			}
			wr.WriteExit(api.ExitStatus{Code: 0})
		})
	})
	m.HandleFunc("POST "+v+"/vms/{name}/exec", func(w http.ResponseWriter, r *http.Request) {
		var req api.ExecRequest
		if _, ok := f.vm(w, r); !ok || !readJSON(w, r, &req) {
			return
		}
		if len(req.Argv) == 0 {
			writeError(w, http.StatusBadRequest, api.Errorf(api.CodeInvalid, "pass a command after --", "empty command"))
			return
		}
		f.mu.Lock()
		f.execs = append(f.execs, req)
		f.mu.Unlock()
		f.upgrade(w, r, func(rd *mux.Reader, wr *mux.Writer) { f.runCommand(req, rd, wr) })
	})
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.Errorf(api.CodeNotFound, "", "the fake daemon has no route %s %s", r.Method, r.URL.Path))
	})
	return m
}

// runCommand plays a guest command on an exec stream.
func (f *fakeDaemon) runCommand(req api.ExecRequest, rd *mux.Reader, wr *mux.Writer) {
	out, errw := wr.Stream(mux.Stdout), wr.Stream(mux.Stderr)
	switch argv := req.Argv; argv[0] {
	case "echo":
		fmt.Fprintln(out, strings.Join(argv[1:], " "))
	case "cat":
		// Stdin frames come back as stdout until StdinClose.
		for {
			fr, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if fr.Type == mux.StdinClose {
				break
			}
			if fr.Type == mux.Stdin {
				out.Write(fr.Payload)
			}
		}
	case "false":
		fmt.Fprintln(errw, "false: failing on purpose")
		wr.WriteExit(api.ExitStatus{Code: 1})
		return
	case "sleep":
		f.waitDrop(rd)
		return
	default:
		wr.WriteExit(api.ExitStatus{Code: 127, Error: argv[0] + ": command not found"})
		return
	}
	wr.WriteExit(api.ExitStatus{Code: 0})
}

// waitDrop reads frames until the client hangs up, then reports it.
func (f *fakeDaemon) waitDrop(rd *mux.Reader) {
	for {
		if _, err := rd.ReadFrame(); err != nil {
			f.dropped <- struct{}{}
			return
		}
	}
}

// upgrade answers 101 as the daemon does and hands the connection to
// serve as mux frames.
func (f *fakeDaemon) upgrade(w http.ResponseWriter, r *http.Request, serve func(*mux.Reader, *mux.Writer)) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.MuxProtocol) {
		writeError(w, http.StatusBadRequest, api.Errorf(api.CodeInvalid, "", "exec needs a protocol upgrade"))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n")
	serve(mux.NewReader(brw.Reader), mux.NewWriter(conn))
}

// vm is the {name} of the request when that VM exists; otherwise it
// answers 404 as the daemon does.
func (f *fakeDaemon) vm(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	f.mu.Lock()
	ok := f.vms[name]
	f.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, api.Errorf(api.CodeNotFound, "list VMs with `banger vm list`", "no VM named %s", name))
	}
	return name, ok
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, api.Errorf(api.CodeInvalid, "", "decode request: %v", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, e *api.Error) {
	writeJSON(w, status, api.ErrorBody{Error: e})
}
