package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/bangerdev/banger/api"
)

func (h *Handler) listVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := h.b.VMs.ListVMs(r.Context())
	reply(w, 200, vms, err)
}

func (h *Handler) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := h.b.VMs.CreateVM(r.Context(), req)
	replyOp(w, id, err)
}

func (h *Handler) getVM(w http.ResponseWriter, r *http.Request) {
	vm, err := h.b.VMs.GetVM(r.Context(), r.PathValue("name"))
	reply(w, 200, vm, err)
}

func (h *Handler) deleteVM(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.b.VMs.DeleteVM(r.Context(), r.PathValue("name"), r.URL.Query().Get("force") == "1"))
}

// Lifecycle changes finish even when the client goes away: a
// half-stopped VM is worse than an unanswered request.

func (h *Handler) startVM(w http.ResponseWriter, r *http.Request) {
	var req api.StartVMRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	vm, err := h.b.VMs.StartVM(context.WithoutCancel(r.Context()), r.PathValue("name"), req)
	reply(w, 200, vm, err)
}

func (h *Handler) restartVM(w http.ResponseWriter, r *http.Request) {
	vm, err := h.b.VMs.RestartVM(context.WithoutCancel(r.Context()), r.PathValue("name"))
	reply(w, 200, vm, err)
}

func (h *Handler) stopVM(w http.ResponseWriter, r *http.Request) {
	var req api.StopVMRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	vm, err := h.b.VMs.StopVM(context.WithoutCancel(r.Context()), r.PathValue("name"), req.Force)
	reply(w, 200, vm, err)
}

func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	hl, err := h.b.VMs.Health(r.Context(), r.PathValue("name"))
	reply(w, 200, hl, err)
}

func (h *Handler) ssh(w http.ResponseWriter, r *http.Request) {
	info, err := h.b.VMs.SSH(r.Context(), r.PathValue("name"))
	reply(w, 200, info, err)
}

// logs streams the console log; with follow=1 it flushes every chunk and
// lasts until the client leaves or the VM stops.
func (h *Handler) logs(w http.ResponseWriter, r *http.Request) {
	follow := r.URL.Query().Get("follow") == "1"
	rd, err := h.b.VMs.ConsoleLog(r.Context(), r.PathValue("name"), follow)
	if err != nil {
		writeError(w, err)
		return
	}
	defer rd.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(200)
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := rd.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if follow && fl != nil {
				fl.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// exec proxies a mux exec stream between the CLI and the guest agent.
// The daemon never parses frames: after both sides have switched
// protocols it splices bytes, so backpressure is end to end.
func (h *Handler) exec(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.MuxProtocol) {
		writeError(w, api.Errorf(api.CodeInvalid, "send Connection: Upgrade and Upgrade: "+api.MuxProtocol, "exec needs a protocol upgrade"))
		return
	}
	var req api.ExecRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	guest, err := h.b.VMs.Exec(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	upgradeAndSplice(w, guest)
}

func (h *Handler) prepareWorkspace(w http.ResponseWriter, r *http.Request) {
	var req api.WorkspaceRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := h.b.Workspaces.PrepareWorkspace(r.Context(), r.PathValue("name"), req)
	replyOp(w, id, err)
}

func (h *Handler) pullWorkspace(w http.ResponseWriter, r *http.Request) {
	var req api.PullRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := h.b.Workspaces.PullWorkspace(r.Context(), r.PathValue("name"), req)
	reply(w, 200, res, err)
}

func (h *Handler) resolveWorkspace(w http.ResponseWriter, r *http.Request) {
	var req api.WorkspaceRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := h.b.Workspaces.ResolveWorkspace(r.Context(), req)
	reply(w, 200, res, err)
}
