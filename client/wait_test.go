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
	return tcpClient(srv)
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

// serveOp answers the event stream of op-1 with events (no final one)
// and GET of the operation and of VM dev with rec and vm.
func serveOp(t *testing.T, rec api.Operation, vm api.VM, events ...api.Event) *Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		switch {
		case strings.HasSuffix(r.URL.Path, "/operations/op-1/events"):
			for _, ev := range events {
				_ = enc.Encode(ev)
			}
		case strings.HasSuffix(r.URL.Path, "/operations/op-1"):
			_ = enc.Encode(rec)
		case strings.HasSuffix(r.URL.Path, "/vms/dev"):
			_ = enc.Encode(vm)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return tcpClient(srv)
}

// A stream that ends while the record still says running (the daemon
// restarted mid-operation) is not a success: it is a typed unavailable
// error that names the operation.
func TestWaitStreamEndedWhileRunning(t *testing.T) {
	stage := api.Stage{Seq: 1, Name: "boot", State: api.OpRunning}
	c := serveOp(t, api.Operation{ID: "op-1", State: api.OpRunning, Target: "dev"}, api.VM{}, api.Event{Stage: &stage})
	_, err := c.WaitVM(context.Background(), api.OperationRef{ID: "op-1"}, nil)
	var ae *api.Error
	if !errors.Is(err, api.ErrUnavailable) || !errors.As(err, &ae) || ae.OperationID != "op-1" || !strings.Contains(ae.Hint, "banger op watch op-1") {
		t.Fatalf("err = %#v", err)
	}
}

// A succeeded operation whose record holds no result: Wait says so with
// api.ErrNoResult, and WaitVM reads the VM by the operation's target.
func TestWaitWithoutResultReadsTarget(t *testing.T) {
	rec := api.Operation{ID: "op-1", State: api.OpSucceeded, Target: "dev"}
	c := serveOp(t, rec, api.VM{Name: "dev", State: api.VMRunning}, api.Event{Done: true, Operation: &rec})
	var vm api.VM
	if _, err := c.Wait(context.Background(), api.OperationRef{ID: "op-1"}, nil, &vm); !errors.Is(err, api.ErrNoResult) || !errors.Is(err, api.ErrInternal) {
		t.Fatalf("Wait err = %v", err)
	}
	vm, err := c.WaitVM(context.Background(), api.OperationRef{ID: "op-1"}, nil)
	if err != nil || vm.Name != "dev" || vm.State != api.VMRunning {
		t.Fatalf("WaitVM = %+v, %v", vm, err)
	}
}

// tcpClient is a Client of srv over TCP instead of the daemon's socket.
func tcpClient(srv *httptest.Server) *Client {
	return NewWithDialer("test", func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", srv.Listener.Addr().String())
	})
}
