package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

// TestSnapshotCalls: each method speaks its route, and the daemon's
// refusals come back as *api.Error.
func TestSnapshotCalls(t *testing.T) {
	var got []string
	m := http.NewServeMux()
	record := func(r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+string(b)))
	}
	m.HandleFunc("POST /v1/vms/{name}/snapshot", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(202)
		_ = json.NewEncoder(w).Encode(api.OperationRef{ID: "op-1"})
	})
	m.HandleFunc("POST /v1/vms/{name}/fork", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(202)
		_ = json.NewEncoder(w).Encode(api.OperationRef{ID: "op-2"})
	})
	m.HandleFunc("POST /v1/vms/{name}/park", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		_ = json.NewEncoder(w).Encode(api.VM{Name: r.PathValue("name"), State: api.VMParked})
	})
	m.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		_ = json.NewEncoder(w).Encode([]api.Snapshot{{Name: "s"}})
	})
	m.HandleFunc("GET /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(404)
		_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: &api.Error{Code: api.CodeNotFound, Message: "no snapshot", Hint: "list them"}})
	})
	m.HandleFunc("DELETE /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(204)
	})
	srv := httptest.NewServer(m)
	defer srv.Close()
	c, ctx := tcpClient(srv), context.Background()

	if ref, err := c.SnapshotVM(ctx, "dev", api.SnapshotVMRequest{Name: "s", Stop: true}); err != nil || ref.ID != "op-1" {
		t.Fatalf("SnapshotVM: %+v %v", ref, err)
	}
	if ref, err := c.ForkVM(ctx, "dev", api.ForkVMRequest{Count: 3}); err != nil || ref.ID != "op-2" {
		t.Fatalf("ForkVM: %+v %v", ref, err)
	}
	if vm, err := c.ParkVM(ctx, "dev"); err != nil || vm.State != api.VMParked {
		t.Fatalf("ParkVM: %+v %v", vm, err)
	}
	if l, err := c.ListSnapshots(ctx); err != nil || len(l) != 1 {
		t.Fatalf("ListSnapshots: %+v %v", l, err)
	}
	_, err := c.GetSnapshot(ctx, "a b")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Hint != "list them" || !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("GetSnapshot: %v", err)
	}
	if err := c.DeleteSnapshot(ctx, "s", true); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, "s", false); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`POST /v1/vms/dev/snapshot {"name":"s","stop":true}`,
		`POST /v1/vms/dev/fork {"count":3}`,
		`POST /v1/vms/dev/park`,
		`GET /v1/snapshots`,
		`GET /v1/snapshots/a%20b`,
		`DELETE /v1/snapshots/s?force=1`,
		`DELETE /v1/snapshots/s`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestWaitForkDecodesResult(t *testing.T) {
	res, _ := json.Marshal(api.ForkResult{Snapshot: "dev-fork", VMs: []api.VM{{Name: "dev-1"}, {Name: "dev-2"}}})
	c := serveEvents(t, api.Event{Done: true, Operation: &api.Operation{ID: "op-1", State: api.OpSucceeded, Result: res}})
	fr, err := c.WaitFork(context.Background(), api.OperationRef{ID: "op-1"}, nil)
	if err != nil || fr.Snapshot != "dev-fork" || len(fr.VMs) != 2 || fr.VMs[1].Name != "dev-2" {
		t.Fatalf("WaitFork = %+v, %v", fr, err)
	}
}

func TestWaitSnapshotDecodesResult(t *testing.T) {
	res, _ := json.Marshal(api.Snapshot{Name: "s", SizeBytes: 42})
	c := serveEvents(t, api.Event{Done: true, Operation: &api.Operation{ID: "op-1", State: api.OpSucceeded, Result: res}})
	sn, err := c.WaitSnapshot(context.Background(), api.OperationRef{ID: "op-1"}, nil)
	if err != nil || sn.Name != "s" || sn.SizeBytes != 42 {
		t.Fatalf("WaitSnapshot = %+v, %v", sn, err)
	}
}
