package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

func (d *Daemon) routes() http.Handler {
	m := http.NewServeMux()
	v := "/" + api.Version
	m.HandleFunc("GET "+v+"/version", d.handleVersion)
	m.HandleFunc("GET "+v+"/doctor", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, d.Doctor(r.Context())) })
	m.HandleFunc("GET "+v+"/vms", d.handleListVMs)
	m.HandleFunc("POST "+v+"/vms", d.handleCreateVM)
	m.HandleFunc("GET "+v+"/vms/{name}", d.handleGetVM)
	m.HandleFunc("DELETE "+v+"/vms/{name}", d.handleDeleteVM)
	m.HandleFunc("POST "+v+"/vms/{name}/start", d.vmAction(func(ctx context.Context, name string, r *http.Request) (store.VM, error) {
		var req api.StartVMRequest
		if err := decodeBody(r, &req); err != nil {
			return store.VM{}, err
		}
		return d.StartVM(ctx, name, req)
	}))
	m.HandleFunc("POST "+v+"/vms/{name}/restart", d.vmAction(func(ctx context.Context, name string, _ *http.Request) (store.VM, error) {
		return d.RestartVM(ctx, name)
	}))
	m.HandleFunc("POST "+v+"/vms/{name}/stop", d.vmAction(func(ctx context.Context, name string, r *http.Request) (store.VM, error) {
		var req api.StopVMRequest
		if err := decodeBody(r, &req); err != nil {
			return store.VM{}, err
		}
		return d.StopVM(ctx, name, req.Force)
	}))
	m.HandleFunc("GET "+v+"/vms/{name}/health", d.handleHealth)
	m.HandleFunc("GET "+v+"/vms/{name}/ssh", d.handleSSH)
	m.HandleFunc("GET "+v+"/vms/{name}/logs", d.handleLogs)
	m.HandleFunc("POST "+v+"/vms/{name}/exec", d.handleExec)
	d.registerSessionRoutes(m, v)
	m.HandleFunc("POST "+v+"/vms/{name}/workspace", d.handlePrepareWorkspace)
	m.HandleFunc("POST "+v+"/vms/{name}/workspace/pull", d.handlePullWorkspace)
	m.HandleFunc("POST "+v+"/workspace/resolve", d.handleResolveWorkspace)
	m.HandleFunc("GET "+v+"/images", d.handleListImages)
	m.HandleFunc("POST "+v+"/images/build", d.handleBuildImage)
	m.HandleFunc("POST "+v+"/images/import", d.handleImportImage)
	m.HandleFunc("GET "+v+"/images/{name}", d.handleGetImage)
	m.HandleFunc("DELETE "+v+"/images/{name}", d.handleDeleteImage)
	m.HandleFunc("POST "+v+"/images/{name}/export", d.handleExportImage)
	m.HandleFunc("POST "+v+"/images/{name}/verify", d.handleVerifyImage)
	m.HandleFunc("POST "+v+"/images/{name}/promote", d.handlePromoteImage)
	m.HandleFunc("POST "+v+"/images/register", d.handleRegisterImage)
	m.HandleFunc("GET "+v+"/operations", d.handleListOperations)
	m.HandleFunc("GET "+v+"/operations/{id}", d.handleGetOperation)
	m.HandleFunc("GET "+v+"/operations/{id}/events", d.handleOperationEvents)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "this daemon speaks /"+api.Version+"; is the CLI newer than the daemon?", "no route %s %s", r.Method, r.URL.Path))
	})
	return d.logRequests(m)
}

func (d *Daemon) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		next.ServeHTTP(w, r)
		d.log.Debug("request", "method", r.Method, "path", r.URL.Path, "took", time.Since(t0).Round(time.Microsecond))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	status := http.StatusInternalServerError
	switch ae.Code {
	case api.CodeInvalid:
		status = http.StatusBadRequest
	case api.CodeNotFound:
		status = http.StatusNotFound
	case api.CodeConflict:
		status = http.StatusConflict
	case api.CodeUnavailable:
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, api.ErrorBody{Error: ae})
}

// decodeBody reads one JSON object of at most api.MaxBodyBytes and rejects
// unknown fields and trailing data: a typo in a request is an error, not a
// silently ignored option.
func decodeBody(r *http.Request, v any) error {
	return DecodeJSON(http.MaxBytesReader(nil, r.Body, api.MaxBodyBytes), v)
}

// DecodeJSON is the request-body parser (fuzzed in tests).
func DecodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(api.CodeInvalid, "", "request body larger than %d bytes", api.MaxBodyBytes)
		}
		if errors.Is(err, io.EOF) {
			return api.Errorf(api.CodeInvalid, "send a JSON object", "empty request body")
		}
		return api.Errorf(api.CodeInvalid, "send a valid JSON object", "malformed request body: %v", err)
	}
	if dec.More() {
		return api.Errorf(api.CodeInvalid, "send exactly one JSON object", "trailing data after request body")
	}
	return nil
}

func (d *Daemon) handleVersion(w http.ResponseWriter, r *http.Request) {
	acc := d.currentAccel()
	writeJSON(w, 200, api.VersionInfo{Version: buildinfo.Version, Commit: buildinfo.Commit, PID: os.Getpid(), Home: d.layout.DataDir, Accel: acc.Accel, AccelNote: acc.Note})
}

func (d *Daemon) vmView(ctx context.Context, vm store.VM) api.VM {
	out := api.VM{
		ID: vm.ID, Name: vm.Name, State: vm.State, CPUs: vm.CPUs, MemoryBytes: int64(vm.MemoryMiB) << 20,
		WorkDiskBytes: vm.WorkDiskBytes, Egress: vm.Egress, Accel: vm.Accel, VMM: vm.VMM,
		PID: vm.PID, SSHPort: vm.SSHPort, Dir: vm.Dir, CreatedAt: vm.CreatedAt, LastError: vm.LastError,
		Image: vm.ImageID,
	}
	manifest := ""
	if img, err := d.store.GetImage(ctx, vm.ImageID); err == nil {
		out.Image = img.Name
		manifest = img.Manifest
		if vm.WorkSeedFingerprint != "" {
			if fp, err := imageSeedFingerprint(img); err == nil && fp != vm.WorkSeedFingerprint {
				out.ImageWorkSeedFingerprint = fp
			}
		}
	}
	out.Net = vm.NetMode
	if isTap(vm) {
		if l, err := d.store.LeaseForVM(ctx, vm.ID); err == nil {
			out.Address = l.Addr.Addr().String()
		}
	}
	out.Workspace = workspaceOf(vm)
	out.WorkSeedFingerprint = vm.WorkSeedFingerprint
	out.AuthSynced = decodeNames(vm.AuthSyncedJSON)
	if ports, err := d.store.PortsForVM(ctx, vm.ID); err == nil {
		for _, p := range ports {
			out.Ports = append(out.Ports, api.Port{HostPort: p.Port, GuestPort: p.GuestPort})
		}
	}
	out.Opencode = opencodeView(out, manifest)
	d.addLiveStats(&out, vm)
	return out
}

func (d *Daemon) handleListVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := d.store.ListVMs(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.VM, 0, len(vms))
	for _, vm := range vms {
		out = append(out, d.vmView(r.Context(), vm))
	}
	writeJSON(w, 200, out)
}

func (d *Daemon) handleCreateVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := d.CreateVM(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, api.OperationRef{ID: id})
}

func (d *Daemon) handlePrepareWorkspace(w http.ResponseWriter, r *http.Request) {
	var req api.WorkspaceRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := d.PrepareWorkspace(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, api.OperationRef{ID: id})
}

func (d *Daemon) handlePullWorkspace(w http.ResponseWriter, r *http.Request) {
	var req api.PullRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := d.PullWorkspace(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, res)
}

func (d *Daemon) handleResolveWorkspace(w http.ResponseWriter, r *http.Request) {
	var req api.WorkspaceRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := d.ResolveWorkspace(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, res)
}

func (d *Daemon) handleGetVM(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	out := d.vmView(r.Context(), vm)
	d.withOpencodePassword(&out, vm)
	writeJSON(w, 200, out)
}

func (d *Daemon) handleDeleteVM(w http.ResponseWriter, r *http.Request) {
	if err := d.DeleteVM(r.Context(), r.PathValue("name"), r.URL.Query().Get("force") == "1"); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) vmAction(fn func(ctx context.Context, name string, r *http.Request) (store.VM, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// Lifecycle changes finish even when the client goes away: a
		// half-stopped VM is worse than an unanswered request.
		ctx := context.WithoutCancel(r.Context())
		vm, err := fn(ctx, r.PathValue("name"), r)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, 200, d.vmView(ctx, vm))
	}
}

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	h := api.Health{VM: vm.Name, State: vm.State, VMM: d.driverFor(vm).Name(), VMMAlive: d.driverFor(vm).Alive(d.proc(vm))}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if c, err := d.agent(ctx, vm); err != nil {
		h.AgentErr = err.Error()
	} else if ah, err := c.Health(ctx); err != nil {
		h.AgentErr = err.Error()
	} else {
		h.Agent = &ah
	}
	writeJSON(w, 200, h)
}

func (d *Daemon) handleSSH(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	if vm.State != api.VMRunning {
		writeError(w, api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name), "VM %q is %s", vm.Name, vm.State))
		return
	}
	key, _, err := sshkeys.EnsureClientKey(d.layout.SSHDir)
	if err != nil {
		writeError(w, err)
		return
	}
	host, port := "127.0.0.1", vm.SSHPort
	if isTap(vm) {
		l, err := d.store.LeaseForVM(r.Context(), vm.ID)
		if err != nil {
			writeError(w, fmt.Errorf("lease of %s: %w", vm.Name, err))
			return
		}
		host, port = l.Addr.Addr().String(), guestSSHPort
	}
	writeJSON(w, 200, api.SSHInfo{
		Host: host, Port: port, User: "root", IdentityFile: key,
		KnownHostsFile: filepath.Join(vm.Dir, paths.FileKnownHosts), HostKeyAlias: hostKeyAlias(vm.Name),
	})
}

// handleLogs streams the console log: the older generation kept by
// rotation (console.go), then the current one; with follow=1 it keeps
// polling the current file, following it across rotations, until the
// client leaves or the VM stops.
func (d *Daemon) handleLogs(w http.ResponseWriter, r *http.Request) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	path := filepath.Join(vm.Dir, paths.FileConsoleLog)
	f, err := os.Open(path)
	if err != nil {
		writeError(w, api.Errorf(api.CodeNotFound, "the VM has not booted yet", "no console log for %q", vm.Name))
		return
	}
	defer func() { f.Close() }()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(200)
	if old, err := os.Open(path + system.RotatedSuffix); err == nil {
		_, err = io.Copy(w, old)
		old.Close()
		if err != nil {
			return
		}
	}
	fl, _ := w.(http.Flusher)
	follow := r.URL.Query().Get("follow") == "1"
	buf := make([]byte, 32<<10)
	var off int64
	for {
		n, err := f.Read(buf)
		if n > 0 {
			off += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			continue
		}
		if err != nil && err != io.EOF {
			return
		}
		if !follow {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		// Rotated (renamed away, a new file in its place) or trimmed
		// (copy-truncate): carry on from the start of the current file.
		if cur, err := os.Stat(path); err == nil {
			if st, err := f.Stat(); err == nil && !os.SameFile(cur, st) {
				if nf, err := os.Open(path); err == nil {
					f.Close()
					f, off = nf, 0
					continue
				}
			} else if cur.Size() < off {
				if _, err := f.Seek(0, io.SeekStart); err == nil {
					off = 0
					continue
				}
			}
		}
		cur, gerr := d.store.GetVM(r.Context(), vm.ID)
		if gerr != nil || !d.driverFor(cur).Alive(d.proc(cur)) {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// handleExec proxies a mux exec stream between the CLI and the guest
// agent. The daemon never parses frames: after both sides have switched
// protocols it splices bytes, so backpressure is end to end.
func (d *Daemon) handleExec(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.MuxProtocol) {
		writeError(w, api.Errorf(api.CodeInvalid, "send Connection: Upgrade and Upgrade: "+api.MuxProtocol, "exec needs a protocol upgrade"))
		return
	}
	var req api.ExecRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Argv) == 0 {
		writeError(w, api.Errorf(api.CodeInvalid, "pass a command after --", "empty command"))
		return
	}
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	c, err := d.agent(r.Context(), vm)
	if err != nil {
		writeError(w, err)
		return
	}
	guest, err := c.Exec(r.Context(), req)
	if err != nil {
		writeError(w, asAPIError(err))
		return
	}
	upgradeAndSplice(w, guest)
}

// upgradeAndSplice answers 101 on the client's connection and splices it
// to guest, an upgraded agent stream: exec and attach reach the guest
// before they answer, so a refusal is still a plain HTTP error.
func upgradeAndSplice(w http.ResponseWriter, guest net.Conn) {
	defer guest.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, errors.New("connection cannot be hijacked"))
		return
	}
	client, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer client.Close()
	if _, err := io.WriteString(client, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n"); err != nil {
		return
	}
	splice(client, brw.Reader, guest)
}

// splice copies both ways until either side is done, then closes both.
func splice(client net.Conn, clientR *bufio.Reader, guest net.Conn) {
	var once sync.Once
	done := make(chan struct{})
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			guest.Close()
			close(done)
		})
	}
	go func() {
		_, _ = io.Copy(guest, clientR)
		closeBoth()
	}()
	go func() {
		_, _ = io.Copy(client, guest)
		closeBoth()
	}()
	<-done
}

func asAPIError(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	return err
}

func (d *Daemon) handleListImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := d.store.ListImages(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, d.imageView(r.Context(), img, false))
	}
	writeJSON(w, 200, out)
}

func (d *Daemon) handleGetImage(w http.ResponseWriter, r *http.Request) {
	img, err := d.getImage(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, d.imageView(r.Context(), img, true))
}

func (d *Daemon) handleBuildImage(w http.ResponseWriter, r *http.Request) {
	var req api.BuildImageRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := d.BuildImage(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, api.OperationRef{ID: id})
}

func (d *Daemon) handleDeleteImage(w http.ResponseWriter, r *http.Request) {
	if err := d.DeleteImage(r.Context(), r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) handleExportImage(w http.ResponseWriter, r *http.Request) {
	var req api.PathRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := d.ExportImage(context.WithoutCancel(r.Context()), r.PathValue("name"), req.Path); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) handleImportImage(w http.ResponseWriter, r *http.Request) {
	var req api.PathRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	img, err := d.ImportImage(context.WithoutCancel(r.Context()), req.Path)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, d.imageView(r.Context(), img, false))
}

func (d *Daemon) handleListOperations(w http.ResponseWriter, r *http.Request) {
	ops, err := d.store.ListOperations(r.Context(), 50)
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Operation, 0, len(ops))
	for _, op := range ops {
		out = append(out, operationView(op))
	}
	writeJSON(w, 200, out)
}

func (d *Daemon) handleGetOperation(w http.ResponseWriter, r *http.Request) {
	op, err := d.ops.get(r.Context(), r.PathValue("id"))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			err = api.Errorf(api.CodeNotFound, "", "no operation %q", r.PathValue("id"))
		}
		writeError(w, err)
		return
	}
	writeJSON(w, 200, op)
}

// handleOperationEvents streams an operation's stages as NDJSON, from the
// beginning, then live, ending with the final record.
func (d *Daemon) handleOperationEvents(w http.ResponseWriter, r *http.Request) {
	events, cancel, err := d.ops.watch(r.Context(), r.PathValue("id"))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			err = api.Errorf(api.CodeNotFound, "", "no operation %q", r.PathValue("id"))
		}
		writeError(w, err)
		return
	}
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(200)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for ev := range events {
		if err := enc.Encode(ev); err != nil {
			return
		}
		if fl != nil {
			fl.Flush()
		}
	}
}

func (d *Daemon) handleVerifyImage(w http.ResponseWriter, r *http.Request) {
	id, err := d.VerifyImage(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, api.OperationRef{ID: id})
}

func (d *Daemon) handlePromoteImage(w http.ResponseWriter, r *http.Request) {
	img, err := d.PromoteImage(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, d.imageView(r.Context(), img, false))
}

func (d *Daemon) handleRegisterImage(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterImageRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	img, err := d.RegisterImage(context.WithoutCancel(r.Context()), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, d.imageView(r.Context(), img, false))
}
