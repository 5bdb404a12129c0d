package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// fakeSnapshotDaemon serves the snapshot routes: snapshot (op-s) and
// fork (op-f) operations with typed results, park, the snapshot records,
// a VM list with a parked VM, and vm create (op-c). Request bodies are
// sent to bodies.
func fakeSnapshotDaemon(t *testing.T, bodies chan<- string) string {
	t.Helper()
	created := time.Now().Add(-2 * time.Hour)
	snap := api.Snapshot{ID: "s1", Name: "base", Kind: api.SnapshotUser, VM: "dev", Image: "agents", VMM: "qemu",
		CPUs: 2, MemoryBytes: 1 << 30, SizeBytes: 300 << 20, CreatedAt: created, UsedBy: []string{"dev", "dev-1", "dev-2", "dev-3"}}
	results := map[string]any{
		"op-s": snap,
		"op-f": api.ForkResult{Snapshot: "dev-fork", VMs: []api.VM{
			{Name: "dev-1", State: api.VMRunning, SSHPort: 2301},
			{Name: "dev-2", State: api.VMRunning, Address: "172.30.0.9", Opencode: &api.Opencode{URL: "http://127.0.0.1:4102"}},
		}},
		"op-c": api.VM{Name: "new", State: api.VMRunning, Snapshot: "base"},
	}
	m := http.NewServeMux()
	start := func(id string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			bodies <- r.Method + " " + r.URL.Path + " " + string(b)
			w.WriteHeader(http.StatusAccepted)
			json.NewEncoder(w).Encode(api.OperationRef{ID: id})
		}
	}
	m.HandleFunc("POST /v1/vms/dev/snapshot", start("op-s"))
	m.HandleFunc("POST /v1/vms/dev/fork", start("op-f"))
	m.HandleFunc("POST /v1/vms", start("op-c"))
	m.HandleFunc("GET /v1/operations/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		op := api.Operation{ID: id, Target: "dev", State: api.OpSucceeded}
		op.Result, _ = json.Marshal(results[id])
		enc := json.NewEncoder(w)
		enc.Encode(api.Event{Stage: &api.Stage{Seq: 1, Name: "save", State: api.OpRunning}})
		enc.Encode(api.Event{Done: true, Operation: &op})
	})
	m.HandleFunc("POST /v1/vms/dev/park", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.VM{Name: "dev", State: api.VMParked})
	})
	m.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode([]api.VM{{Name: "dev", State: api.VMParked, Image: "agents", SSHPort: 2300}})
	})
	m.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode([]api.Snapshot{snap})
	})
	m.HandleFunc("GET /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") != "base" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: &api.Error{Code: api.CodeNotFound, Message: "no snapshot \"" + r.PathValue("name") + "\""}})
			return
		}
		json.NewEncoder(w).Encode(snap)
	})
	m.HandleFunc("DELETE /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("force") != "1" {
			w.WriteHeader(409)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: &api.Error{Code: api.CodeConflict, Message: "snapshot \"base\" is used by vm dev-1"}})
			return
		}
		w.WriteHeader(204)
	})
	return fakeDaemon(t, m)
}

func TestVMSnapshotCommands(t *testing.T) {
	bodies := make(chan string, 8)
	sock := fakeSnapshotDaemon(t, bodies)
	in := strings.NewReader("")

	code, out, errb := runWith(t, sock, in, "vm", "snapshot", "dev", "--name", "base", "--stop")
	if code != 0 || !strings.Contains(errb, "… save") ||
		!strings.Contains(out, "Snapshot base of VM dev: 300.0 MiB on disk (2 CPUs, 1.0 GiB memory).") ||
		!strings.Contains(out, "VM dev is stopped") ||
		!strings.Contains(out, "banger vm create NEW --snapshot base") || strings.Contains(out, "vm fork") {
		t.Fatalf("snapshot --stop: exit %d\nstdout %s\nstderr %s", code, out, errb)
	}
	if b := <-bodies; b != `POST /v1/vms/dev/snapshot {"name":"base","stop":true}` {
		t.Errorf("request %s", b)
	}
	code, out, _ = runWith(t, sock, in, "vm", "snapshot", "dev")
	if code != 0 || !strings.Contains(out, "banger vm fork dev --count 2") {
		t.Fatalf("snapshot: exit %d %s", code, out)
	}
	<-bodies
	code, out, _ = runWith(t, sock, in, "--json", "vm", "snapshot", "dev")
	var sn api.Snapshot
	if code != 0 || json.Unmarshal([]byte(out), &sn) != nil || sn.Name != "base" || sn.SizeBytes != 300<<20 {
		t.Fatalf("snapshot --json: exit %d %q", code, out)
	}
	<-bodies

	code, out, _ = runWith(t, sock, in, "vm", "snapshot", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME KIND VM IMAGE MEMORY SIZE CREATED USED-BY" ||
		strings.Join(strings.Fields(lines[1]), " ") != "base user dev agents 1.0 GiB 300.0 MiB 2h dev,dev-1,dev-2 +1" {
		t.Fatalf("snapshot list: exit %d\n%s", code, out)
	}
	code, out, _ = runWith(t, sock, in, "vm", "snapshot", "show", "base")
	if code != 0 || !strings.Contains(out, "used by:    dev, dev-1, dev-2, dev-3") || !strings.Contains(out, "restore:    banger vm create NEW --snapshot base") {
		t.Fatalf("snapshot show: exit %d\n%s", code, out)
	}
	code, _, errb = runWith(t, sock, in, "vm", "snapshot", "show", "nope")
	if code != ExitError || !strings.Contains(errb, `error: no snapshot "nope"`) {
		t.Fatalf("snapshot show nope: exit %d %s", code, errb)
	}

	// A refused delete says how to go on; --force goes through.
	code, _, errb = runWith(t, sock, in, "vm", "snapshot", "delete", "base")
	if code != ExitError || !strings.Contains(errb, "error: snapshot \"base\" is used by vm dev-1\nhint:") || !strings.Contains(errb, "banger vm snapshot delete base --force") {
		t.Fatalf("delete in use: exit %d %s", code, errb)
	}
	code, out, _ = runWith(t, sock, in, "vm", "snapshot", "rm", "base", "--force")
	if code != 0 || out != "Snapshot base deleted.\n" {
		t.Fatalf("delete --force: exit %d %q", code, out)
	}
}

func TestVMForkParkAndList(t *testing.T) {
	bodies := make(chan string, 8)
	sock := fakeSnapshotDaemon(t, bodies)
	in := strings.NewReader("")

	code, out, errb := runWith(t, sock, in, "vm", "fork", "dev", "--count", "2", "--prefix", "w")
	if code != 0 || !strings.Contains(errb, "forking VM dev into 2") {
		t.Fatalf("fork: exit %d\n%s\n%s", code, out, errb)
	}
	if b := <-bodies; b != `POST /v1/vms/dev/fork {"count":2,"prefix":"w"}` {
		t.Errorf("request %s", b)
	}
	for _, want := range []string{
		"VM dev forked into 2 VMs from snapshot dev-fork",
		"dev-1  running  127.0.0.1:2301  -                      banger vm ssh dev-1",
		"dev-2  running  172.30.0.9:22   http://127.0.0.1:4102  banger vm ssh dev-2",
		"banger vm workspace pull dev-1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("fork output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runWith(t, sock, in, "--json", "vm", "fork", "dev")
	var fr api.ForkResult
	if code != 0 || json.Unmarshal([]byte(out), &fr) != nil || len(fr.VMs) != 2 {
		t.Fatalf("fork --json: exit %d %q", code, out)
	}
	if b := <-bodies; b != `POST /v1/vms/dev/fork {"count":1}` {
		t.Errorf("default count: %s", b)
	}

	code, out, _ = runWith(t, sock, in, "vm", "park", "dev")
	if code != 0 || !strings.HasPrefix(out, "VM dev is parked") || !strings.Contains(out, "banger vm start dev") {
		t.Fatalf("park: exit %d %q", code, out)
	}
	code, out, _ = runWith(t, sock, in, "vm", "list")
	if code != 0 || !strings.Contains(out, "dev   parked  agents") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}

	code, out, errb = runWith(t, sock, in, "vm", "create", "new", "--snapshot", "base")
	if code != 0 || !strings.Contains(out, "snapshot: base") {
		t.Fatalf("create --snapshot: exit %d\n%s\n%s", code, out, errb)
	}
	if b := <-bodies; b != `POST /v1/vms {"name":"new","snapshot":"base"}` {
		t.Errorf("create request %s", b)
	}
	runWith(t, sock, in, "vm", "create", "--cold")
	if b := <-bodies; b != `POST /v1/vms {"cold":true}` {
		t.Errorf("create --cold request %s", b)
	}
}

func TestSnapshotFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"vm", "create", "--snapshot", "s", "--cold"}, "--snapshot and --cold exclude each other"},
		{[]string{"vm", "run", "--snapshot", "s", "--cold"}, "--snapshot and --cold exclude each other"},
		{[]string{"vm", "run", "--snapshot", "s", "--image", "x"}, "--snapshot and --image exclude each other"},
		{[]string{"vm", "fork", "dev", "--count", "0"}, "--count must be 1 or more"},
		{[]string{"vm", "fork"}, "accepts 1 arg"},
		{[]string{"vm", "snapshot"}, "accepts 1 arg"},
		{[]string{"vm", "snapshot", "a", "b"}, "accepts 1 arg"},
		{[]string{"vm", "snapshot", "list", "x"}, "unknown command"},
		{[]string{"vm", "snapshot", "show"}, "accepts 1 arg"},
		{[]string{"vm", "park"}, "accepts 1 arg"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, tc.args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: got %d %q, want %d %q", tc.args, code, stderr, ExitUsage, tc.want)
		}
	}
}

func TestSizeLabel(t *testing.T) {
	for n, want := range map[int64]string{0: "-", 512: "512 B", 1536: "1.5 KiB", 300 << 20: "300.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := sizeLabel(n); got != want {
			t.Errorf("sizeLabel(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestPrintSnapshotTableEmpty(t *testing.T) {
	var b bytes.Buffer
	if err := printSnapshotTable(&b, nil, time.Now()); err != nil || strings.TrimSpace(b.String()) != "NAME  KIND  VM  IMAGE  MEMORY  SIZE  CREATED  USED-BY" {
		t.Fatalf("%q %v", b.String(), err)
	}
}
