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
	"github.com/bangerdev/banger/internal/api"
)

// fakeFC is a stand-in for Firecracker's API, strict where the swagger
// is: every body is checked against its definition (required fields,
// types, no unknown fields, as Firecracker's serde does), pre-boot calls
// are refused after InstanceStart, and InstanceStart needs a boot source
// and a root drive. It answers as Firecracker does: 204 on success, 400
// with {"fault_message": ...} on error.
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

// field types of the documented definitions: "s" string, "b" bool,
// "i" integer, "o" object, "a" array. A leading "!" marks a required one.
var schemas = map[string]map[string]string{
	"/machine-config":     {"!vcpu_count": "i", "!mem_size_mib": "i", "smt": "b", "track_dirty_pages": "b", "cpu_template": "s", "huge_pages": "s"},
	"/boot-source":        {"!kernel_image_path": "s", "boot_args": "s", "initrd_path": "s"},
	"/drives":             {"!drive_id": "s", "!is_root_device": "b", "path_on_host": "s", "is_read_only": "b", "partuuid": "s", "cache_type": "s", "rate_limiter": "o", "io_engine": "s", "socket": "s"},
	"/network-interfaces": {"!iface_id": "s", "!host_dev_name": "s", "guest_mac": "s", "mtu": "i", "rx_rate_limiter": "o", "tx_rate_limiter": "o"},
	"/vsock":              {"!guest_cid": "i", "!uds_path": "s", "vsock_id": "s"},
	"/logger":             {"log_path": "s", "level": "s", "show_level": "b", "show_log_origin": "b", "module": "s"},
	"/metrics":            {"!metrics_path": "s", "emit_id": "b", "properties": "o"},
	"/actions":            {"!action_type": "s"},
	"/vm":                 {"!state": "s"},
	"/snapshot/create":    {"!mem_file_path": "s", "!snapshot_path": "s", "snapshot_type": "s"},
	"/snapshot/load":      {"!snapshot_path": "s", "mem_backend": "o", "mem_file_path": "s", "enable_diff_snapshots": "b", "track_dirty_pages": "b", "resume_vm": "b", "network_overrides": "a", "vsock_override": "o", "clock_realtime": "b"},
}

var preBoot = map[string]bool{"/machine-config": true, "/boot-source": true, "/drives": true, "/network-interfaces": true, "/vsock": true, "/logger": true, "/metrics": true}

func checkBody(schema map[string]string, body map[string]any) error {
	for k := range schema {
		if strings.HasPrefix(k, "!") {
			if _, ok := body[k[1:]]; !ok {
				return fmt.Errorf("missing field `%s`", k[1:])
			}
		}
	}
	for k, v := range body {
		t, ok := schema[k]
		if !ok {
			t, ok = schema["!"+k]
		}
		if !ok {
			return fmt.Errorf("unknown field `%s`", k)
		}
		good := false
		switch t {
		case "s":
			_, good = v.(string)
		case "b":
			_, good = v.(bool)
		case "i":
			n, isNum := v.(float64)
			good = isNum && n == float64(int64(n)) && n >= 0
		case "o":
			_, good = v.(map[string]any)
		case "a":
			_, good = v.([]any)
		}
		if !good {
			return fmt.Errorf("invalid type for field `%s`", k)
		}
	}
	return nil
}

func fault(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

func (f *fakeFC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	path := r.URL.Path
	key := path
	for _, pre := range []string{"/drives/", "/network-interfaces/"} {
		if strings.HasPrefix(path, pre) {
			key = strings.TrimSuffix(pre, "/")
		}
	}
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
		json.NewEncoder(w).Encode(InstanceInfo{AppName: "Firecracker", ID: "fake", State: state, VMMVersion: "1.12.0"})
		return
	}
	schema, ok := schemas[key]
	wantMethod := http.MethodPut
	if key == "/vm" {
		wantMethod = http.MethodPatch
	}
	if !ok || r.Method != wantMethod {
		f.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"fault_message":"Invalid request method and/or path: %s %s."}`, r.Method, path)
		return
	}
	if r.Header.Get("Content-Type") != "application/json" {
		f.mu.Unlock()
		fault(w, "Unsupported media type")
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		f.mu.Unlock()
		fault(w, "An error occurred when deserializing the json body of a request: "+err.Error())
		return
	}
	if err := checkBody(schema, body); err != nil {
		f.mu.Unlock()
		fault(w, "An error occurred when deserializing the json body of a request: "+err.Error()+".")
		return
	}
	if preBoot[key] && f.started {
		f.mu.Unlock()
		fault(w, "The requested operation is not supported after starting the microVM.")
		return
	}
	// Per-endpoint rules of the documented API.
	var err string
	var start bool
	switch key {
	case "/drives":
		if body["drive_id"] != strings.TrimPrefix(path, "/drives/") {
			err = "The id from the path does not match the id from the body!"
		} else if p, _ := body["path_on_host"].(string); p == "" {
			err = "Unable to create the block device: path_on_host is required"
		} else if body["is_root_device"] == true {
			f.rootDisk = true
		}
	case "/network-interfaces":
		if body["iface_id"] != strings.TrimPrefix(path, "/network-interfaces/") {
			err = "The id from the path does not match the id from the body!"
		}
	case "/vsock":
		if n := body["guest_cid"].(float64); n < 3 {
			err = "Invalid guest CID"
		} else {
			f.vsockUDS = body["uds_path"].(string)
		}
	case "/machine-config":
		if n := body["vcpu_count"].(float64); n < 1 || n > 32 {
			err = "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled."
		}
	case "/boot-source":
		if _, e := os.Stat(body["kernel_image_path"].(string)); e != nil {
			err = "The kernel file cannot be opened: " + e.Error()
		} else {
			f.boot = true
		}
	case "/logger":
		if p, ok := body["log_path"].(string); ok {
			if _, e := os.Stat(p); e != nil {
				err = "Failed to open target file: " + e.Error()
			}
		}
	case "/actions":
		switch body["action_type"] {
		case ActionInstanceStart:
			switch {
			case f.started:
				err = "The requested operation is not supported after starting the microVM."
			case !f.boot:
				err = "Cannot start microvm without kernel configuration."
			case !f.rootDisk:
				err = "banger's fake requires a root drive before InstanceStart"
			default:
				f.started, start = true, true
			}
		case ActionSendCtrlAltDel:
			if !f.started {
				err = "The requested operation is not supported before starting the microVM."
			} else if f.onCtrlAltDel != nil {
				defer f.onCtrlAltDel()
			}
		case ActionFlushMetrics:
		default:
			err = fmt.Sprintf("unknown variant `%v`", body["action_type"])
		}
	case "/vm":
		switch {
		case !f.started:
			err = "The requested operation is not supported before starting the microVM."
		case body["state"] == StatePaused:
			f.paused = true
		case body["state"] == StateResumed:
			f.paused = false
		default:
			err = fmt.Sprintf("unknown variant `%v`", body["state"])
		}
	case "/snapshot/create":
		if !f.paused {
			err = "Cannot save microVM state: microVM is not paused."
		} else if t, ok := body["snapshot_type"]; ok && t != SnapshotFull && t != SnapshotDiff {
			err = fmt.Sprintf("unknown variant `%v`", t)
		}
	case "/snapshot/load":
		mb, hasMB := body["mem_backend"].(map[string]any)
		_, hasFile := body["mem_file_path"]
		switch {
		case f.started || f.boot:
			err = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
		case hasMB == hasFile:
			err = "Exactly one of mem_backend and mem_file_path must be given"
		case hasMB && checkBody(map[string]string{"!backend_type": "s", "!backend_path": "s"}, mb) != nil:
			err = "invalid mem_backend"
		case body["resume_vm"] == true:
			f.started = true
		default:
			f.started, f.paused = true, true
		}
	}
	f.mu.Unlock()
	if err != "" {
		fault(w, err)
		return
	}
	if start && f.onStart != nil {
		f.onStart(f)
	}
	w.WriteHeader(http.StatusNoContent)
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
				if err != nil || line != "CONNECT "+strconv.Itoa(api.AgentVsockPort)+"\n" {
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
