package cli

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

// fakeOpDaemon starts every operation as op-1 and streams one stage and
// the end, with result as the operation's result (nil: none).
func fakeOpDaemon(t *testing.T, kind string, result any) string {
	t.Helper()
	m := http.NewServeMux()
	start := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(api.OperationRef{ID: "op-1"})
	}
	m.HandleFunc("POST /v1/vms", start)
	m.HandleFunc("POST /v1/images/build", start)
	m.HandleFunc("GET /v1/operations/op-1/events", func(w http.ResponseWriter, r *http.Request) {
		op := api.Operation{ID: "op-1", Kind: kind, Target: "dev", State: api.OpSucceeded, Stages: []api.Stage{}}
		if result != nil {
			op.Result, _ = json.Marshal(result)
		}
		enc := json.NewEncoder(w)
		enc.Encode(api.Event{Stage: &api.Stage{Seq: 1, Name: "boot", State: api.OpRunning}})
		enc.Encode(api.Event{Done: true, Operation: &op})
	})
	m.HandleFunc("GET /v1/vms/dev", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.VM{Name: "dev", State: api.VMCreating})
	})
	return fakeDaemon(t, m)
}

// The VM `vm create` prints is the operation's typed result, the same
// JSON shape as `vm show --json`.
func TestCreatePrintsOperationResult(t *testing.T) {
	sock := fakeOpDaemon(t, "vm.create", api.VM{Name: "dev", State: api.VMRunning, CPUs: 3, Image: "base"})
	code, out, errb := runWith(t, sock, strings.NewReader(""), "--json", "vm", "create", "dev")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	var vm api.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil || vm.Name != "dev" || vm.CPUs != 3 || vm.State != api.VMRunning {
		t.Fatalf("printed %q (%v)", out, err)
	}
	code, out, errb = runWith(t, sock, strings.NewReader(""), "vm", "create", "dev")
	if code != 0 || !strings.HasPrefix(out, "VM dev is running.") || !strings.Contains(errb, "… boot") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errb)
	}
}

// Without a result (the stream ended early), `vm create` reads the VM.
func TestCreateWithoutResultReadsVM(t *testing.T) {
	sock := fakeOpDaemon(t, "vm.create", nil)
	code, out, errb := runWith(t, sock, strings.NewReader(""), "--json", "vm", "create", "dev")
	var vm api.VM
	if code != 0 || json.Unmarshal([]byte(out), &vm) != nil || vm.State != api.VMCreating {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errb)
	}
}

func TestImageBuildPrintsOperationResult(t *testing.T) {
	sock := fakeOpDaemon(t, "image.build", api.Image{Name: "dev", State: api.ImageStaged, Fingerprint: "abc"})
	code, out, errb := runWith(t, sock, strings.NewReader(""), "--json", "image", "build")
	var img api.Image
	if code != 0 || json.Unmarshal([]byte(out), &img) != nil || img.Fingerprint != "abc" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errb)
	}
	code, out, _ = runWith(t, sock, strings.NewReader(""), "image", "build")
	if code != 0 || !strings.Contains(out, "built and staged") {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
}
