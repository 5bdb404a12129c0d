package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agentapi"
)

// fakeFC is a stand-in for Firecracker's API. Two layers of checks, kept
// apart so it is clear where each comes from:
//
//   - the schema: every method, path, path parameter and body is validated
//     against Firecracker's own swagger (testdata/swagger, swagger_test.go),
//     plus banger's rule denyUnknownFields (Firecracker's serde refuses
//     unknown fields; the swagger does not say so);
//   - behaviour the swagger cannot express (firecrackerBehaviour): pre-boot
//     calls refused after InstanceStart, InstanceStart needs a boot source,
//     ids in the path match the body, snapshot ordering; and the fake's own
//     demands on banger (bangerFakeRules): a root drive before start.
//
// It answers as Firecracker does: 204 on success, 400 with
// {"fault_message": ...} on error.
type fakeFC struct {
	mu       sync.Mutex
	calls    []string // "PUT /drives/rootfs"
	started  bool
	paused   bool
	boot     bool
	rootDisk bool
	vsockUDS string
	// faults makes the next call to a path fail with that message.
	faults map[string]string
	// onStart runs after a successful InstanceStart (outside the lock).
	onStart func(f *fakeFC)
	// onCtrlAltDel runs when the guest is asked to reboot.
	onCtrlAltDel func()
	vsockLn      net.Listener
}

func newFake() *fakeFC { return &fakeFC{faults: map[string]string{}} }

// implemented is what the fake serves, by swagger path template: the
// calls banger makes. Anything else the swagger defines is refused as not
// implemented by the fake (never silently accepted).
var implemented = map[string]bool{
	"PUT /machine-config": true, "PUT /boot-source": true, "PUT /drives/{drive_id}": true,
	"PUT /network-interfaces/{iface_id}": true, "PUT /vsock": true, "PUT /logger": true,
	"PUT /metrics": true, "PUT /actions": true, "PATCH /vm": true,
	"PUT /snapshot/create": true, "PUT /snapshot/load": true,
}

// preBoot are the calls Firecracker documents as "Pre-boot only".
var preBoot = map[string]bool{"/machine-config": true, "/boot-source": true, "/drives/{drive_id}": true, "/network-interfaces/{iface_id}": true, "/vsock": true, "/logger": true, "/metrics": true}

func fault(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

func (f *fakeFC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	path := r.URL.Path
	if msg, ok := f.faults[path]; ok {
		delete(f.faults, path)
		f.mu.Unlock()
		fault(w, msg)
		return
	}
	if r.Method == http.MethodGet && path == "/" {
		state := "Not started"
		if f.started {
			state = "Running"
		}
		if f.paused {
			state = "Paused"
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(InstanceInfo{AppName: "Firecracker", ID: "fake", State: state, VMMVersion: strings.TrimPrefix(strings.TrimSpace(swaggerVersion), "v")})
		return
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		f.mu.Unlock()
		fault(w, "read body: "+err.Error())
		return
	}
	def, err := firecrackerAPI()
	if err != nil {
		f.mu.Unlock()
		fault(w, "fake: "+err.Error())
		return
	}
	route, _, verr := def.validate(r, raw)
	if route == nil {
		f.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"fault_message":"Invalid request method and/or path: %s %s."}`, r.Method, path)
		return
	}
	if verr != nil {
		f.mu.Unlock()
		fault(w, "An error occurred when deserializing the json body of a request: "+verr.Error())
		return
	}
	key := route.Path
	if !implemented[r.Method+" "+key] {
		f.mu.Unlock()
		fault(w, "banger's fake does not implement "+r.Method+" "+key)
		return
	}
	if r.Header.Get("Content-Type") != "application/json" {
		f.mu.Unlock()
		fault(w, "Unsupported media type")
		return
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		f.mu.Unlock()
		fault(w, "An error occurred when deserializing the json body of a request: "+err.Error())
		return
	}
	msg, start := f.firecrackerBehaviour(key, path, body)
	if msg == "" {
		msg = f.bangerFakeRules(key, body)
	}
	if msg == "" {
		start = f.apply(key, body, start)
	}
	f.mu.Unlock()
	if msg != "" {
		fault(w, msg)
		return
	}
	if start && f.onStart != nil {
		f.onStart(f)
	}
	if key == "/actions" && body["action_type"] == ActionSendCtrlAltDel && f.onCtrlAltDel != nil {
		f.onCtrlAltDel()
	}
	w.WriteHeader(http.StatusNoContent)
}

// firecrackerBehaviour is what Firecracker does beyond its swagger (from
// its docs and source): state rules and cross-field checks. It only
// checks; apply changes the state.
func (f *fakeFC) firecrackerBehaviour(key, path string, body map[string]any) (msg string, start bool) {
	if preBoot[key] && f.started {
		return "The requested operation is not supported after starting the microVM.", false
	}
	switch key {
	case "/drives/{drive_id}":
		if body["drive_id"] != strings.TrimPrefix(path, "/drives/") {
			return "The id from the path does not match the id from the body!", false
		}
		if p, _ := body["path_on_host"].(string); p == "" {
			return "Unable to create the block device: path_on_host is required", false
		}
	case "/network-interfaces/{iface_id}":
		if body["iface_id"] != strings.TrimPrefix(path, "/network-interfaces/") {
			return "The id from the path does not match the id from the body!", false
		}
	case "/boot-source":
		if _, e := os.Stat(body["kernel_image_path"].(string)); e != nil {
			return "The kernel file cannot be opened: " + e.Error(), false
		}
	case "/logger":
		if p, ok := body["log_path"].(string); ok {
			if _, e := os.Stat(p); e != nil {
				return "Failed to open target file: " + e.Error(), false
			}
		}
	case "/actions":
		switch body["action_type"] {
		case ActionInstanceStart:
			switch {
			case f.started:
				return "The requested operation is not supported after starting the microVM.", false
			case !f.boot:
				return "Cannot start microvm without kernel configuration.", false
			}
			return "", true
		case ActionSendCtrlAltDel:
			if !f.started {
				return "The requested operation is not supported before starting the microVM.", false
			}
		}
	case "/vm":
		if !f.started {
			return "The requested operation is not supported before starting the microVM.", false
		}
	case "/snapshot/create":
		if !f.paused {
			return "Cannot save microVM state: microVM is not paused.", false
		}
	case "/snapshot/load":
		_, hasMB := body["mem_backend"]
		_, hasFile := body["mem_file_path"]
		switch {
		case f.started || f.boot:
			return "Loading a microVM snapshot not allowed after configuring boot-specific resources.", false
		case hasMB == hasFile:
			return "Exactly one of mem_backend and mem_file_path must be given", false
		}
	}
	return "", start
}

// bangerFakeRules are the fake's own demands on banger's driver, stricter
// than Firecracker: a VM without a root drive would boot into a kernel
// panic, so the fake refuses to start one.
func (f *fakeFC) bangerFakeRules(key string, body map[string]any) string {
	if key == "/actions" && body["action_type"] == ActionInstanceStart && !f.rootDisk {
		return "banger's fake requires a root drive before InstanceStart"
	}
	return ""
}

// apply records an accepted call's effect on the fake's state.
func (f *fakeFC) apply(key string, body map[string]any, start bool) bool {
	switch key {
	case "/drives/{drive_id}":
		if body["is_root_device"] == true {
			f.rootDisk = true
		}
	case "/vsock":
		f.vsockUDS = body["uds_path"].(string)
	case "/boot-source":
		f.boot = true
	case "/actions":
		if start {
			f.started = true
		}
	case "/vm":
		f.paused = body["state"] == StatePaused
	case "/snapshot/load":
		f.started = true
		f.paused = body["resume_vm"] != true
	}
	return start
}

// serveVsock plays Firecracker's host side of hybrid vsock on the UDS:
// CONNECT to the agent port gets "OK <n>" and a real banger agent;
// anything else is closed, as Firecracker does when no guest listens.
func (f *fakeFC) serveVsock(path string) error {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	f.vsockLn = ln
	srv := agent.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() {
		hostPort := 1073741824
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hostPort++
			go func(c net.Conn, hp int) {
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil || line != "CONNECT "+strconv.Itoa(agentapi.AgentVsockPort)+"\n" {
					c.Close()
					return
				}
				fmt.Fprintf(c, "OK %d\n", hp)
				srv.ServeConn(context.Background(), c)
			}(c, hostPort)
		}
	}()
	return nil
}

// serveFakeFirecracker is the body of the fake "firecracker" executable
// (this test binary under that name): it serves the fake API on
// --api-sock and exits when the guest "reboots".
func serveFakeFirecracker(args []string) int {
	var sock string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--api-sock" {
			sock = args[i+1]
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake firecracker: no --api-sock")
		return 1
	}
	// Behaviour switches are marker files next to the socket: the driver
	// hands Firecracker a clean environment.
	marker := func(name string) bool {
		_, err := os.Stat(filepath.Join(filepath.Dir(sock), name))
		return err == nil
	}
	if marker("fake-die") {
		fmt.Fprintln(os.Stderr, "fake firecracker: dying on request")
		return 1
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f := newFake()
	done := make(chan struct{})
	f.onStart = func(f *fakeFC) {
		fmt.Println("fake guest: booting")
		if err := f.serveVsock(f.vsockUDS); err != nil {
			fmt.Fprintln(os.Stderr, "vsock:", err)
		}
	}
	var once sync.Once
	f.onCtrlAltDel = func() {
		if marker("fake-ignore-cad") {
			return
		}
		once.Do(func() { close(done) })
	}
	go http.Serve(ln, f)
	<-done
	ln.Close()
	return 0
}

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "firecracker" {
		os.Exit(serveFakeFirecracker(os.Args[1:]))
	}
	os.Exit(m.Run())
}
