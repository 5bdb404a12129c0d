package httpapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

// fakeVMs answers with canned values; unset methods panic (nil embed).
type fakeVMs struct {
	VMs
	deleted   string
	force     bool
	stopCtx   context.Context
	consoleRd io.ReadCloser
	guest     net.Conn
}

func (f *fakeVMs) CreateVM(ctx context.Context, req api.CreateVMRequest) (string, error) {
	if req.Name == "taken" {
		return "", api.Errorf(api.CodeConflict, "pick another name", "VM %q exists", req.Name)
	}
	return "op1", nil
}

func (f *fakeVMs) DeleteVM(ctx context.Context, name string, force bool) error {
	f.deleted, f.force = name, force
	return nil
}

func (f *fakeVMs) GetVM(ctx context.Context, name string) (api.VM, error) {
	if name != "dev" {
		return api.VM{}, api.Errorf(api.CodeNotFound, "", "no VM %q", name)
	}
	return api.VM{Name: "dev", State: api.VMRunning}, nil
}

func (f *fakeVMs) StopVM(ctx context.Context, name string, force bool) (api.VM, error) {
	f.stopCtx = ctx
	return api.VM{Name: name, State: api.VMStopped}, nil
}

func (f *fakeVMs) ConsoleLog(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	if f.consoleRd == nil {
		return nil, api.Errorf(api.CodeNotFound, "the VM has not booted yet", "no console log for %q", name)
	}
	return f.consoleRd, nil
}

func (f *fakeVMs) Exec(ctx context.Context, name string, req api.ExecRequest) (net.Conn, error) {
	return f.guest, nil
}

type fakeSessions struct {
	Sessions
	logs string
	err  error
}

func (f *fakeSessions) SessionLogs(ctx context.Context, vm, ref string, req api.SessionLogsRequest, w io.Writer) error {
	if f.logs != "" {
		_, _ = io.WriteString(w, f.logs)
	}
	return f.err
}

func do(t *testing.T, h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

// TestWireAnswers pins statuses and bodies byte for byte: client and the
// e2e suite read them.
func TestWireAnswers(t *testing.T) {
	vms := &fakeVMs{consoleRd: io.NopCloser(strings.NewReader("boot\nlogin:"))}
	h := New(Backend{VMs: vms, Sessions: &fakeSessions{err: api.Errorf(api.CodeNotFound, "", "no session %q", "x")}})
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"GET", "/v2/vms", "", 404, `{"error":{"message":"no route GET /v2/vms","hint":"this daemon speaks /v1; is the CLI newer than the daemon?","code":"not_found"}}` + "\n"},
		{"POST", "/v1/vms", `{"name":"dev"}`, 202, `{"operation_id":"op1"}` + "\n"},
		{"POST", "/v1/vms", `{"name":"taken"}`, 409, `{"error":{"message":"VM \"taken\" exists","hint":"pick another name","code":"conflict"}}` + "\n"},
		{"POST", "/v1/vms", `{"nmae":"dev"}`, 400, `{"error":{"message":"malformed request body: json: unknown field \"nmae\"","hint":"send a valid JSON object","code":"invalid"}}` + "\n"},
		{"POST", "/v1/vms", ``, 400, `{"error":{"message":"empty request body","hint":"send a JSON object","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/nope", "", 404, `{"error":{"message":"no VM \"nope\"","code":"not_found"}}` + "\n"},
		{"DELETE", "/v1/vms/dev?force=1", "", 204, ``},
		{"POST", "/v1/vms/dev/stop", `{"force":true}`, 200, `{"id":"","name":"dev","state":"stopped","image":"","cpus":0,"memory_bytes":0,"work_disk_bytes":0,"egress":"","accel":"","vmm":"","dir":"","created_at":"0001-01-01T00:00:00Z"}` + "\n"},
		{"GET", "/v1/vms/dev/logs", "", 200, "boot\nlogin:"},
		{"POST", "/v1/vms/dev/exec", `{"argv":["true"]}`, 400, `{"error":{"message":"exec needs a protocol upgrade","hint":"send Connection: Upgrade and Upgrade: ` + api.MuxProtocol + `","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/dev/sessions/x/logs?tail=-1", "", 400, `{"error":{"message":"invalid tail \"-1\"","hint":"pass a number of lines","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/dev/sessions/x/logs", "", 404, `{"error":{"message":"no session \"x\"","code":"not_found"}}` + "\n"},
	}
	for _, c := range cases {
		rec := do(t, h, c.method, c.path, c.body)
		if rec.Code != c.status || rec.Body.String() != c.want {
			t.Errorf("%s %s: got %d %q\nwant %d %q", c.method, c.path, rec.Code, rec.Body, c.status, c.want)
		}
	}
	if vms.deleted != "dev" || !vms.force {
		t.Errorf("delete: got %q force=%t", vms.deleted, vms.force)
	}
	if vms.stopCtx == nil || vms.stopCtx.Done() != nil {
		t.Error("stop must run on a context the client cannot cancel")
	}
}

// TestSessionLogsStartLazily: an error after the first byte cannot change
// the status any more; the bytes stand.
func TestSessionLogsStartLazily(t *testing.T) {
	h := New(Backend{Sessions: &fakeSessions{logs: "partial", err: errors.New("guest went away")}})
	rec := do(t, h, "GET", "/v1/vms/dev/sessions/x/logs", "")
	if rec.Code != 200 || rec.Body.String() != "partial" || rec.Header().Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("got %d %q %q", rec.Code, rec.Body, rec.Header())
	}
}

// TestExecUpgradeSplices: exec answers 101 and then carries bytes both
// ways between the client and the guest stream.
func TestExecUpgradeSplices(t *testing.T) {
	guest, agentSide := net.Pipe()
	srv := httptest.NewServer(New(Backend{VMs: &fakeVMs{guest: guest}}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"argv":["true"]}`
	_, _ = io.WriteString(c, "POST /v1/vms/dev/exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+
		"\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != api.MuxProtocol {
		t.Fatalf("answer %s %v", resp.Status, resp.Header)
	}
	go func() { _, _ = agentSide.Write([]byte("from guest")); agentSide.Close() }()
	got, _ := io.ReadAll(br)
	if string(got) != "from guest" {
		t.Fatalf("client read %q", got)
	}
}
