package httpapi

import (
	"encoding/json"
	"net/http"
)

func (h *Handler) listOperations(w http.ResponseWriter, r *http.Request) {
	ops, err := h.b.Operations.ListOperations(r.Context())
	reply(w, 200, ops, err)
}

func (h *Handler) getOperation(w http.ResponseWriter, r *http.Request) {
	op, err := h.b.Operations.GetOperation(r.Context(), r.PathValue("id"))
	reply(w, 200, op, err)
}

// operationEvents streams an operation's stages as NDJSON, from the
// beginning, then live, ending with the final record.
func (h *Handler) operationEvents(w http.ResponseWriter, r *http.Request) {
	events, cancel, err := h.b.Operations.WatchOperation(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(200)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			// The client left; cancel unsubscribes at once instead of at
			// the operation's next event.
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}

// events streams the event bus as NDJSON until the client leaves.
// ?vm=NAME limits it to one VM.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	ch, cancel, err := h.b.Events.Subscribe(r.Context(), r.URL.Query().Get("vm"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok || enc.Encode(ev) != nil || rc.Flush() != nil {
				return
			}
		}
	}
}
