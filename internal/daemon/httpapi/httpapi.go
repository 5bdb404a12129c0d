// Package httpapi is the daemon's HTTP layer, the way tailscale's
// ipn/localapi sits over its LocalBackend: each handler decodes a
// request, calls one engine and encodes the answer. Engines are reached
// only through the small interfaces below, which the daemon's engines
// implement; no engine imports this package. Routes, statuses and bodies
// are the v1 wire contract of package api (client and e2e depend on
// them byte for byte).
package httpapi

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/httpjson"
)

// System answers questions about the daemon itself.
type System interface {
	Version() api.VersionInfo
	Doctor(ctx context.Context) []doctor.Check
}

// VMs is the VM engine. Lifecycle calls (Start, Restart, Stop) get a
// context that is not cancelled when the client leaves.
type VMs interface {
	ListVMs(ctx context.Context) ([]api.VM, error)
	// GetVM is the full view, with secrets only `vm show` may see.
	GetVM(ctx context.Context, name string) (api.VM, error)
	CreateVM(ctx context.Context, req api.CreateVMRequest) (opID string, err error)
	DeleteVM(ctx context.Context, name string, force bool) error
	StartVM(ctx context.Context, name string, req api.StartVMRequest) (api.VM, error)
	RestartVM(ctx context.Context, name string) (api.VM, error)
	StopVM(ctx context.Context, name string, force bool) (api.VM, error)
	Health(ctx context.Context, name string) (api.Health, error)
	SSH(ctx context.Context, name string) (api.SSHInfo, error)
	// ConsoleLog reads the console log from its oldest kept generation;
	// with follow it blocks for more until ctx ends or the VM stops.
	ConsoleLog(ctx context.Context, name string, follow bool) (io.ReadCloser, error)
	// Exec starts req in the guest and returns the agent's upgraded
	// stream (mux frames).
	Exec(ctx context.Context, name string, req api.ExecRequest) (net.Conn, error)
}

// Workspaces moves repositories in and out of VMs.
type Workspaces interface {
	PrepareWorkspace(ctx context.Context, name string, req api.WorkspaceRequest) (opID string, err error)
	PullWorkspace(ctx context.Context, name string, req api.PullRequest) (api.PullResult, error)
	ResolveWorkspace(ctx context.Context, req api.WorkspaceRequest) (api.ResolvedRepo, error)
}

// Images is the image engine.
type Images interface {
	ListImages(ctx context.Context) ([]api.Image, error)
	// GetImage is the full view, with the package lists.
	GetImage(ctx context.Context, name string) (api.Image, error)
	BuildImage(ctx context.Context, req api.BuildImageRequest) (opID string, err error)
	DeleteImage(ctx context.Context, name string) error
	ExportImage(ctx context.Context, name, dir string) error
	ImportImage(ctx context.Context, path string) (api.Image, error)
	VerifyImage(ctx context.Context, name string) (opID string, err error)
	PromoteImage(ctx context.Context, name string) (api.Image, error)
	RegisterImage(ctx context.Context, req api.RegisterImageRequest) (api.Image, error)
}

// Sessions is the guest-session engine; vm is a VM name or id, ref a
// session name or id.
type Sessions interface {
	StartSession(ctx context.Context, vm string, req api.StartSessionRequest) (api.Session, error)
	ListSessions(ctx context.Context, vm string) ([]api.Session, error)
	GetSession(ctx context.Context, vm, ref string) (api.Session, error)
	RemoveSession(ctx context.Context, vm, ref string) error
	SignalSession(ctx context.Context, vm, ref string, req api.SignalSessionRequest) (api.Session, error)
	StopSession(ctx context.Context, vm, ref string, req api.StopSessionRequest) (api.Session, error)
	// AttachSession returns the agent's upgraded stream (mux frames).
	AttachSession(ctx context.Context, vm, ref string, req api.AttachSessionRequest) (net.Conn, error)
	// SessionLogs copies one log to w; an error before w's first write
	// is the answer.
	SessionLogs(ctx context.Context, vm, ref string, req api.SessionLogsRequest, w io.Writer) error
}

// Events is the event bus.
type Events interface {
	// Subscribe watches the bus (one VM's events when vm is set) until
	// cancel is called.
	Subscribe(ctx context.Context, vm string) (events <-chan api.BusEvent, cancel func(), err error)
}

// Operations is the operations engine.
type Operations interface {
	ListOperations(ctx context.Context) ([]api.Operation, error)
	GetOperation(ctx context.Context, id string) (api.Operation, error)
	// WatchOperation replays an operation's stages, then follows it;
	// the channel closes after the final event.
	WatchOperation(ctx context.Context, id string) (events <-chan api.Event, cancel func(), err error)
}

// Egress is the egress gateway's per-VM policy and connection log.
type Egress interface {
	EgressShow(ctx context.Context, vm string) (api.EgressView, error)
	// EgressChange applies ch and answers the new view; the VM's next
	// connection is judged by it.
	EgressChange(ctx context.Context, vm string, ch api.EgressChange) (api.EgressView, error)
	// EgressLog is the VM's kept log rows that q selects, oldest first.
	EgressLog(ctx context.Context, vm string, q api.EgressLogQuery) ([]api.EgressRecord, error)
	EgressLearn(ctx context.Context, vm string) (api.EgressLearned, error)
}

// Snapshots is the snapshot engine: saves, forks, park, and the
// snapshot records. Snapshot and fork are operations.
type Snapshots interface {
	SnapshotVM(ctx context.Context, vm string, req api.SnapshotVMRequest) (opID string, err error)
	ForkVM(ctx context.Context, vm string, req api.ForkVMRequest) (opID string, err error)
	// ParkVM saves a running VM to disk and ends its VMM; any later use
	// wakes it.
	ParkVM(ctx context.Context, vm string) (api.VM, error)
	ListSnapshots(ctx context.Context) ([]api.Snapshot, error)
	GetSnapshot(ctx context.Context, name string) (api.Snapshot, error)
	DeleteSnapshot(ctx context.Context, name string, force bool) error
}

// Backend is every engine the handler calls.
type Backend struct {
	System     System
	VMs        VMs
	Workspaces Workspaces
	Images     Images
	Sessions   Sessions
	Events     Events
	Operations Operations
	Egress     Egress
	Snapshots  Snapshots
	// Log gets one debug line per request.
	Log *slog.Logger
}

// Handler serves the v1 API over a Backend.
type Handler struct {
	b Backend
}

// New returns the daemon's HTTP handler, request logging included.
func New(b Backend) http.Handler {
	h := &Handler{b: b}
	return h.logRequests(h.routes())
}

func (h *Handler) routes() *http.ServeMux {
	m := http.NewServeMux()
	v := "/" + api.Version
	m.HandleFunc("GET "+v+"/version", h.version)
	m.HandleFunc("GET "+v+"/doctor", h.doctor)
	m.HandleFunc("GET "+v+"/vms", h.listVMs)
	m.HandleFunc("POST "+v+"/vms", h.createVM)
	m.HandleFunc("GET "+v+"/vms/{name}", h.getVM)
	m.HandleFunc("DELETE "+v+"/vms/{name}", h.deleteVM)
	m.HandleFunc("POST "+v+"/vms/{name}/start", h.startVM)
	m.HandleFunc("POST "+v+"/vms/{name}/restart", h.restartVM)
	m.HandleFunc("POST "+v+"/vms/{name}/stop", h.stopVM)
	m.HandleFunc("GET "+v+"/vms/{name}/health", h.health)
	m.HandleFunc("GET "+v+"/vms/{name}/ssh", h.ssh)
	m.HandleFunc("GET "+v+"/vms/{name}/logs", h.logs)
	m.HandleFunc("POST "+v+"/vms/{name}/exec", h.exec)
	s := v + "/vms/{name}/sessions"
	m.HandleFunc("POST "+s, h.startSession)
	m.HandleFunc("GET "+s, h.listSessions)
	m.HandleFunc("GET "+s+"/{ref}", h.getSession)
	m.HandleFunc("DELETE "+s+"/{ref}", h.removeSession)
	m.HandleFunc("POST "+s+"/{ref}/attach", h.attachSession)
	m.HandleFunc("POST "+s+"/{ref}/signal", h.signalSession)
	m.HandleFunc("POST "+s+"/{ref}/stop", h.stopSession)
	m.HandleFunc("GET "+s+"/{ref}/logs", h.sessionLogs)
	m.HandleFunc("GET "+v+"/events", h.events)
	m.HandleFunc("GET "+v+"/vms/{name}/egress", h.egressShow)
	m.HandleFunc("POST "+v+"/vms/{name}/egress", h.egressChange)
	m.HandleFunc("GET "+v+"/vms/{name}/egress/log", h.egressLog)
	m.HandleFunc("GET "+v+"/vms/{name}/egress/learn", h.egressLearn)
	m.HandleFunc("POST "+v+"/vms/{name}/snapshot", h.snapshotVM)
	m.HandleFunc("POST "+v+"/vms/{name}/fork", h.forkVM)
	m.HandleFunc("POST "+v+"/vms/{name}/park", h.parkVM)
	m.HandleFunc("GET "+v+"/snapshots", h.listSnapshots)
	m.HandleFunc("GET "+v+"/snapshots/{name}", h.getSnapshot)
	m.HandleFunc("DELETE "+v+"/snapshots/{name}", h.deleteSnapshot)
	m.HandleFunc("POST "+v+"/vms/{name}/workspace", h.prepareWorkspace)
	m.HandleFunc("POST "+v+"/vms/{name}/workspace/pull", h.pullWorkspace)
	m.HandleFunc("POST "+v+"/workspace/resolve", h.resolveWorkspace)
	m.HandleFunc("GET "+v+"/images", h.listImages)
	m.HandleFunc("POST "+v+"/images/build", h.buildImage)
	m.HandleFunc("POST "+v+"/images/import", h.importImage)
	m.HandleFunc("GET "+v+"/images/{name}", h.getImage)
	m.HandleFunc("DELETE "+v+"/images/{name}", h.deleteImage)
	m.HandleFunc("POST "+v+"/images/{name}/export", h.exportImage)
	m.HandleFunc("POST "+v+"/images/{name}/verify", h.verifyImage)
	m.HandleFunc("POST "+v+"/images/{name}/promote", h.promoteImage)
	m.HandleFunc("POST "+v+"/images/register", h.registerImage)
	m.HandleFunc("GET "+v+"/operations", h.listOperations)
	m.HandleFunc("GET "+v+"/operations/{id}", h.getOperation)
	m.HandleFunc("GET "+v+"/operations/{id}/events", h.operationEvents)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "this daemon speaks /"+api.Version+"; is the CLI newer than the daemon?", "no route %s %s", r.Method, r.URL.Path))
	})
	return m
}

func (h *Handler) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		next.ServeHTTP(w, r)
		if h.b.Log != nil {
			h.b.Log.Debug("request", "method", r.Method, "path", r.URL.Path, "took", time.Since(t0).Round(time.Microsecond))
		}
	})
}

// Short names for the shared writers and the strict decoder.
var (
	writeJSON  = httpjson.WriteJSON
	writeError = httpjson.WriteError
	decodeBody = httpjson.DecodeBody
)

// reply answers v with status, or err.
func reply[T any](w http.ResponseWriter, status int, v T, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, v)
}

// replyOp answers 202 with the reference of a started operation.
func replyOp(w http.ResponseWriter, id string, err error) {
	reply(w, http.StatusAccepted, api.OperationRef{ID: id}, err)
}

// replyEmpty answers 204, or err.
func replyEmpty(w http.ResponseWriter, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, h.b.System.Version())
}

func (h *Handler) doctor(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, h.b.System.Doctor(r.Context()))
}
