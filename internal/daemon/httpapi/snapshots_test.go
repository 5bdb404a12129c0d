package httpapi

import (
	"context"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

type fakeSnapshots struct {
	Snapshots
	snapReq  api.SnapshotVMRequest
	forkReq  api.ForkVMRequest
	forkVM   string
	parkCtx  context.Context
	deleted  string
	force    bool
	delCtx   context.Context
	snapshot []api.Snapshot
}

func (f *fakeSnapshots) SnapshotVM(ctx context.Context, vm string, req api.SnapshotVMRequest) (string, error) {
	if vm != "dev" {
		return "", api.Errorf(api.CodeNotFound, "", "no VM %q", vm)
	}
	f.snapReq = req
	return "op2", nil
}

func (f *fakeSnapshots) ForkVM(ctx context.Context, vm string, req api.ForkVMRequest) (string, error) {
	f.forkVM, f.forkReq = vm, req
	return "op3", nil
}

func (f *fakeSnapshots) ParkVM(ctx context.Context, vm string) (api.VM, error) {
	f.parkCtx = ctx
	if vm == "stopped" {
		return api.VM{}, api.Errorf(api.CodeConflict, "start it first", "VM %q is stopped", vm)
	}
	return api.VM{Name: vm, State: api.VMParked}, nil
}

func (f *fakeSnapshots) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	return f.snapshot, nil
}

func (f *fakeSnapshots) GetSnapshot(ctx context.Context, name string) (api.Snapshot, error) {
	for _, s := range f.snapshot {
		if s.Name == name {
			return s, nil
		}
	}
	return api.Snapshot{}, api.Errorf(api.CodeNotFound, "list them with `banger vm snapshot list`", "no snapshot %q", name)
}

func (f *fakeSnapshots) DeleteSnapshot(ctx context.Context, name string, force bool) error {
	f.delCtx = ctx
	if name == "base" && !force {
		return api.Errorf(api.CodeConflict, "delete them first, or pass --force to flatten them", "snapshot %q is used by vm a", name)
	}
	f.deleted, f.force = name, force
	return nil
}

func TestSnapshotRoutes(t *testing.T) {
	fs := &fakeSnapshots{}
	h := New(Backend{Snapshots: fs})
	// An empty list is [], not null.
	if rec := do(t, h, "GET", "/v1/snapshots", ""); rec.Code != 200 || rec.Body.String() != "[]\n" {
		t.Fatalf("empty list: %d %q", rec.Code, rec.Body)
	}
	fs.snapshot = []api.Snapshot{{ID: "s1", Name: "snap", Kind: api.SnapshotUser, VM: "dev", Image: "base", VMM: "qemu",
		CPUs: 2, MemoryBytes: 1 << 30, SizeBytes: 10, CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), UsedBy: []string{"dev-1"}}}
	snapJSON := `{"id":"s1","name":"snap","kind":"user","vm":"dev","image":"base","vmm":"qemu","cpus":2,"memory_bytes":1073741824,"work_disk_bytes":0,"size_bytes":10,"created_at":"2026-01-02T03:04:05Z","used_by":["dev-1"]}`
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/v1/vms/dev/snapshot", `{"name":"snap","stop":true}`, 202, `{"operation_id":"op2"}` + "\n"},
		{"POST", "/v1/vms/nope/snapshot", `{}`, 404, `{"error":{"message":"no VM \"nope\"","code":"not_found"}}` + "\n"},
		{"POST", "/v1/vms/dev/snapshot", `{"nmae":"x"}`, 400, `{"error":{"message":"malformed request body: json: unknown field \"nmae\"","hint":"send a valid JSON object","code":"invalid"}}` + "\n"},
		{"POST", "/v1/vms/dev/snapshot", ``, 400, `{"error":{"message":"empty request body","hint":"send a JSON object","code":"invalid"}}` + "\n"},
		{"POST", "/v1/vms/dev/fork", `{"count":4,"prefix":"w"}`, 202, `{"operation_id":"op3"}` + "\n"},
		{"POST", "/v1/vms/dev/fork", `{"count":-1}`, 400, `{"error":{"message":"invalid fork count -1","hint":"pass a count of 1 or more (or leave it out for 1)","code":"invalid"}}` + "\n"},
		{"POST", "/v1/vms/dev/park", ``, 200, `{"id":"","name":"dev","state":"parked","image":"","cpus":0,"memory_bytes":0,"work_disk_bytes":0,"egress":"","accel":"","vmm":"","dir":"","created_at":"0001-01-01T00:00:00Z"}` + "\n"},
		{"POST", "/v1/vms/stopped/park", ``, 409, `{"error":{"message":"VM \"stopped\" is stopped","hint":"start it first","code":"conflict"}}` + "\n"},
		{"GET", "/v1/snapshots", "", 200, "[" + snapJSON + "]\n"},
		{"GET", "/v1/snapshots/snap", "", 200, snapJSON + "\n"},
		{"GET", "/v1/snapshots/nope", "", 404, `{"error":{"message":"no snapshot \"nope\"","hint":"list them with ` + "`banger vm snapshot list`" + `","code":"not_found"}}` + "\n"},
		{"DELETE", "/v1/snapshots/base", "", 409, `{"error":{"message":"snapshot \"base\" is used by vm a","hint":"delete them first, or pass --force to flatten them","code":"conflict"}}` + "\n"},
		{"DELETE", "/v1/snapshots/base?force=maybe", "", 400, `{"error":{"message":"invalid force \"maybe\"","hint":"pass force=1 or leave it out","code":"invalid"}}` + "\n"},
		{"DELETE", "/v1/snapshots/base?force=1", "", 204, ``},
	}
	for _, c := range cases {
		rec := do(t, h, c.method, c.path, c.body)
		if rec.Code != c.status || rec.Body.String() != c.want {
			t.Errorf("%s %s: got %d %q\nwant %d %q", c.method, c.path, rec.Code, rec.Body, c.status, c.want)
		}
	}
	if fs.snapReq != (api.SnapshotVMRequest{Name: "snap", Stop: true}) {
		t.Errorf("snapshot request reached the engine as %+v", fs.snapReq)
	}
	if fs.forkVM != "dev" || fs.forkReq != (api.ForkVMRequest{Count: 4, Prefix: "w"}) {
		t.Errorf("fork reached the engine as %s %+v", fs.forkVM, fs.forkReq)
	}
	if fs.deleted != "base" || !fs.force {
		t.Errorf("delete: %q force=%t", fs.deleted, fs.force)
	}
	if fs.parkCtx == nil || fs.parkCtx.Done() != nil || fs.delCtx.Done() != nil {
		t.Error("park and delete must run on a context the client cannot cancel")
	}
}
