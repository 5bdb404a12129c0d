package client

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

// serveEvents answers every operation event stream with events.
func serveEvents(t *testing.T, events ...api.Event) *Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/operations/op-1/events") {
			http.NotFound(w, r)
			return
		}
		enc := json.NewEncoder(w)
		for _, ev := range events {
			_ = enc.Encode(ev)
		}
	}))
	t.Cleanup(srv.Close)
	return NewWithDialer("test", func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", srv.Listener.Addr().String())
	})
}

func TestWaitVMDecodesResult(t *testing.T) {
	stage := api.Stage{Seq: 1, Name: "boot", State: api.OpSucceeded}
	res, _ := json.Marshal(api.VM{Name: "dev", State: api.VMRunning, CPUs: 2})
	c := serveEvents(t,
		api.Event{Stage: &stage},
		api.Event{Done: true, Operation: &api.Operation{ID: "op-1", State: api.OpSucceeded, Result: res}})
	var seen []string
	vm, err := c.WaitVM(context.Background(), api.OperationRef{ID: "op-1"}, func(ev api.Event) {
		if ev.Stage != nil {
			seen = append(seen, ev.Stage.Name)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Name != "dev" || vm.State != api.VMRunning || vm.CPUs != 2 {
		t.Fatalf("vm = %+v", vm)
	}
	if len(seen) != 1 || seen[0] != "boot" {
		t.Fatalf("events = %v", seen)
	}
}

func TestWaitFailedOperation(t *testing.T) {
	c := serveEvents(t, api.Event{Done: true, Operation: &api.Operation{
		ID: "op-1", State: api.OpFailed, Error: "boot: no kernel", Hint: "rebuild the image", ConsoleTail: "panic",
	}})
	var img api.Image
	op, err := c.Wait(context.Background(), api.OperationRef{ID: "op-1"}, nil, &img)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Hint != "rebuild the image" || ae.OperationID != "op-1" {
		t.Fatalf("err = %#v", err)
	}
	if op.ConsoleTail != "panic" {
		t.Fatalf("the failed operation is returned too: %+v", op)
	}
}

func TestDecodeResultWithoutResult(t *testing.T) {
	op := api.Operation{ID: "op-1", State: api.OpRunning}
	var ws api.Workspace
	if err := op.DecodeResult(&ws); err == nil {
		t.Fatal("a running operation has no result")
	}
	op.Result = json.RawMessage(`{"dir":"/root/repo","files":3}`)
	if err := op.DecodeResult(&ws); err != nil || ws.Dir != "/root/repo" || ws.Files != 3 {
		t.Fatalf("ws = %+v, err = %v", ws, err)
	}
}
