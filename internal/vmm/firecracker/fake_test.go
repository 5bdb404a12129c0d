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
	"syscall"
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
	// configured: a pre-boot resource other than the logger and the
	// metrics was set, after which a snapshot load is refused.
	configured bool
	// The device configuration, for GET /vm/config and snapshots.
	machine map[string]any
	drives  []map[string]any
	nics    []map[string]any
	vsock   map[string]any
	// cwd resolves relative paths as Firecracker's working directory
	// does ("" is the process's own).
	cwd string
	// bodies records each call's body, in order.
	bodies []string
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
	"PUT /snapshot/create": true, "PUT /snapshot/load": true, "GET /vm/config": true,
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
	f.bodies = append(f.bodies, string(raw))
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
	if r.Method == http.MethodGet {
		// GET /vm/config: what Firecracker was configured with (or
		// restored), paths as it was given them.
		cfg := map[string]any{"drives": orEmpty(f.drives), "network-interfaces": orEmpty(f.nics), "machine-config": f.machine}
		if f.vsock != nil {
			cfg["vsock"] = f.vsock
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(cfg)
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
		p, _ := body["path_on_host"].(string)
		if p == "" {
			return "Unable to create the block device: path_on_host is required", false
		}
		if _, e := os.Stat(f.resolve(p)); e != nil {
			return "Unable to create the block device: " + e.Error(), false
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
		if msg := f.writeSnapshot(body); msg != "" {
			return msg, false
		}
	case "/snapshot/load":
		_, hasMB := body["mem_backend"]
		_, hasFile := body["mem_file_path"]
		switch {
		case f.started || f.boot || f.configured:
			return "Loading a microVM snapshot not allowed after configuring boot-specific resources.", false
		case hasMB == hasFile:
			return "Exactly one of mem_backend and mem_file_path must be given", false
		}
		if msg := f.checkLoad(body); msg != "" {
			return msg, false
		}
		return "", body["resume_vm"] == true
	}
	return "", start
}

func orEmpty(l []map[string]any) []map[string]any {
	if l == nil {
		return []map[string]any{}
	}
	return l
}

// resolve is a path as the fake Firecracker opens it.
func (f *fakeFC) resolve(p string) string {
	if filepath.IsAbs(p) || f.cwd == "" {
		return p
	}
	return filepath.Join(f.cwd, p)
}

// fakeVMState is the fake's device state file: the configuration a load
// restores. (Firecracker's own is a versioned binary with a CRC.)
type fakeVMState struct {
	Magic   string           `json:"fake_firecracker_vmstate"`
	Machine map[string]any   `json:"machine"`
	Drives  []map[string]any `json:"drives"`
	NICs    []map[string]any `json:"nics"`
	Vsock   map[string]any   `json:"vsock"`
}

const fakeStateMagic = "v1"

// writeSnapshot writes the state file and a memory file of the guest's
// size, truncating existing ones as Firecracker does.
func (f *fakeFC) writeSnapshot(body map[string]any) string {
	st := fakeVMState{Magic: fakeStateMagic, Machine: f.machine, Drives: f.drives, NICs: f.nics, Vsock: f.vsock}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(f.resolve(body["snapshot_path"].(string)), data, 0o644); err != nil {
		return "Cannot save the microVM state: " + err.Error()
	}
	mem, err := os.OpenFile(f.resolve(body["mem_file_path"].(string)), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "Cannot save the guest memory: " + err.Error()
	}
	defer mem.Close()
	size := int64(128) << 20
	if f.machine != nil {
		size = int64(f.machine["mem_size_mib"].(float64)) << 20
	}
	if err := mem.Truncate(size); err != nil {
		return "Cannot save the guest memory: " + err.Error()
	}
	// A touched page, so the memory file is not all hole.
	mem.WriteAt([]byte("guest page"), 4096)
	return ""
}

// checkLoad is what Firecracker checks while loading: the state file
// parses, the memory file matches the guest's size, and every device
// the snapshot names can be reopened at its saved path (or override).
func (f *fakeFC) checkLoad(body map[string]any) string {
	data, err := os.ReadFile(f.resolve(body["snapshot_path"].(string)))
	if err != nil {
		return "Load snapshot error: Failed to open snapshot file: " + err.Error()
	}
	var st fakeVMState
	if err := json.Unmarshal(data, &st); err != nil || st.Magic != fakeStateMagic {
		return "Load snapshot error: Failed to load microVM state: CRC64 validation failed"
	}
	memPath, _ := body["mem_file_path"].(string)
	if mb, ok := body["mem_backend"].(map[string]any); ok {
		memPath = mb["backend_path"].(string)
	}
	fi, err := os.Stat(f.resolve(memPath))
	if err != nil {
		return "Load snapshot error: Cannot restore guest memory: " + err.Error()
	}
	if want := int64(st.Machine["mem_size_mib"].(float64)) << 20; fi.Size() != want {
		return fmt.Sprintf("Load snapshot error: memory file is %d bytes, the guest has %d", fi.Size(), want)
	}
	for _, dr := range st.Drives {
		if _, err := os.Stat(f.resolve(dr["path_on_host"].(string))); err != nil {
			return "Load snapshot error: Failed to restore block device: " + err.Error()
		}
	}
	if ov, ok := body["network_overrides"].([]any); ok {
		for _, o := range ov {
			id := o.(map[string]any)["iface_id"]
			found := false
			for _, n := range st.NICs {
				found = found || n["iface_id"] == id
			}
			if !found {
				return fmt.Sprintf("Load snapshot error: network override for unknown interface %v", id)
			}
		}
	}
	return ""
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
	if preBoot[key] && key != "/logger" && key != "/metrics" {
		f.configured = true
	}
	switch key {
	case "/machine-config":
		f.machine = body
	case "/drives/{drive_id}":
		if body["is_root_device"] == true {
			f.rootDisk = true
		}
		f.drives = replaceByID(f.drives, "drive_id", body)
	case "/network-interfaces/{iface_id}":
		f.nics = replaceByID(f.nics, "iface_id", body)
	case "/vsock":
		f.vsockUDS = f.resolve(body["uds_path"].(string))
		f.vsock = body
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
		data, _ := os.ReadFile(f.resolve(body["snapshot_path"].(string)))
		var st fakeVMState
		json.Unmarshal(data, &st)
		f.machine, f.drives, f.nics, f.vsock = st.Machine, st.Drives, st.NICs, st.Vsock
		if ov, ok := body["network_overrides"].([]any); ok {
			for _, o := range ov {
				o := o.(map[string]any)
				for _, n := range f.nics {
					if n["iface_id"] == o["iface_id"] {
						n["host_dev_name"] = o["host_dev_name"]
					}
				}
			}
		}
		if ov, ok := body["vsock_override"].(map[string]any); ok && f.vsock != nil {
			f.vsock["uds_path"] = ov["uds_path"]
		}
		if f.vsock != nil {
			f.vsockUDS = f.resolve(f.vsock["uds_path"].(string))
		}
	}
	return start
}

// replaceByID puts body into l, replacing the entry with the same id.
func replaceByID(l []map[string]any, idKey string, body map[string]any) []map[string]any {
	for i, e := range l {
		if e[idKey] == body[idKey] {
			l[i] = body
			return l
		}
	}
	return append(l, body)
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
	if len(args) == 1 && args[0] == "--version" {
		fmt.Printf("Firecracker %s\n", strings.TrimSpace(swaggerVersion))
		return 0
	}
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
	os.WriteFile(filepath.Join(filepath.Dir(sock), "fake-pid"), []byte(strconv.Itoa(os.Getpid())), 0o600)
	f := newFake()
	if marker("fake-create-fails") {
		f.faults["/snapshot/create"] = "Cannot create snapshot: No space left on device (os error 28)"
	}
	if marker("fake-load-fails") {
		f.faults["/snapshot/load"] = "Load snapshot error: Failed to restore from the snapshot: injected by the test"
	}
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
	calls, _ := os.OpenFile(filepath.Join(filepath.Dir(sock), "fake-calls.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	var loadFailed sync.Once
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		f.ServeHTTP(rec, r)
		f.mu.Lock()
		body := ""
		if r.Method != http.MethodGet && len(f.bodies) > 0 {
			body = f.bodies[len(f.bodies)-1]
		}
		f.mu.Unlock()
		fmt.Fprintf(calls, "%s %s %d %s\n", r.Method, r.URL.Path, rec.status, body)
		// Firecracker ends after a failed load: its state is undefined.
		if r.URL.Path == "/snapshot/load" && rec.status >= 400 {
			loadFailed.Do(func() { once.Do(func() { close(done) }) })
		}
	}))
	<-done
	ln.Close()
	return 0
}

// statusRecorder keeps the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// fakeJailer is the body of the fake "jailer" executable: what the
// real one does that matters to banger's paths (docs/jailer.md), for
// real: chroot into <chroot-base>/<exec-file name>/<id>/root and drop to
// --uid/--gid, then run Firecracker (here the fake, in this process)
// with the arguments after "--". Needs root.
func fakeJailer(args []string) int {
	var id, execFile, base string
	uid, gid := -1, -1
	var fcArgs []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--" {
			fcArgs = args[i+1:]
			break
		}
		if i+1 >= len(args) {
			break
		}
		switch args[i] {
		case "--id":
			id = args[i+1]
		case "--exec-file":
			execFile = args[i+1]
		case "--chroot-base-dir":
			base = args[i+1]
		case "--uid":
			uid, _ = strconv.Atoi(args[i+1])
		case "--gid":
			gid, _ = strconv.Atoi(args[i+1])
		}
		i++
	}
	root := filepath.Join(base, filepath.Base(execFile), id, "root")
	if err := os.Chdir(root); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer:", err)
		return 1
	}
	if err := syscall.Chroot("."); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer: chroot:", err)
		return 1
	}
	if err := syscall.Setgid(gid); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer: setgid:", err)
		return 1
	}
	if err := syscall.Setuid(uid); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer: setuid:", err)
		return 1
	}
	return serveFakeFirecracker(fcArgs)
}

func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "firecracker":
		os.Exit(serveFakeFirecracker(os.Args[1:]))
	case "jailer":
		os.Exit(fakeJailer(os.Args[1:]))
	}
	os.Exit(m.Run())
}
