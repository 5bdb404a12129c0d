package httpapi

import (
	"context"
	"net/http"

	"github.com/bangerdev/banger/api"
)

func (h *Handler) snapshotVM(w http.ResponseWriter, r *http.Request) {
	var req api.SnapshotVMRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	id, err := h.b.Snapshots.SnapshotVM(r.Context(), r.PathValue("name"), req)
	replyOp(w, id, err)
}

func (h *Handler) forkVM(w http.ResponseWriter, r *http.Request) {
	var req api.ForkVMRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Count < 0 {
		writeError(w, api.Errorf(api.CodeInvalid, "pass a count of 1 or more (or leave it out for 1)", "invalid fork count %d", req.Count))
		return
	}
	id, err := h.b.Snapshots.ForkVM(r.Context(), r.PathValue("name"), req)
	replyOp(w, id, err)
}

// parkVM is a lifecycle change: it finishes even when the client goes
// away, as stop does (a half-saved VM is worse than an unanswered
// request). It takes no body.
func (h *Handler) parkVM(w http.ResponseWriter, r *http.Request) {
	vm, err := h.b.Snapshots.ParkVM(context.WithoutCancel(r.Context()), r.PathValue("name"))
	reply(w, 200, vm, err)
}

func (h *Handler) listSnapshots(w http.ResponseWriter, r *http.Request) {
	snaps, err := h.b.Snapshots.ListSnapshots(r.Context())
	if snaps == nil {
		snaps = []api.Snapshot{}
	}
	reply(w, 200, snaps, err)
}

func (h *Handler) getSnapshot(w http.ResponseWriter, r *http.Request) {
	sn, err := h.b.Snapshots.GetSnapshot(r.Context(), r.PathValue("name"))
	reply(w, 200, sn, err)
}

// deleteSnapshot answers ?force=1 (flatten what stands on it first).
// Flattening copies disks: it finishes even when the client goes away.
func (h *Handler) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	var force bool
	switch f := r.URL.Query().Get("force"); f {
	case "", "0", "false":
	case "1", "true":
		force = true
	default:
		writeError(w, api.Errorf(api.CodeInvalid, "pass force=1 or leave it out", "invalid force %q", f))
		return
	}
	replyEmpty(w, h.b.Snapshots.DeleteSnapshot(context.WithoutCancel(r.Context()), r.PathValue("name"), force))
}
