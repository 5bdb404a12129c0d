package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/bangerdev/banger/api"
)

func (h *Handler) startSession(w http.ResponseWriter, r *http.Request) {
	var req api.StartSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	// A start finishes even if the client leaves: a half-launched session
	// is the guest's to resolve, but its outcome should be recorded.
	s, err := h.b.Sessions.StartSession(context.WithoutCancel(r.Context()), r.PathValue("name"), req)
	reply(w, http.StatusCreated, s, err)
}

func (h *Handler) listSessions(w http.ResponseWriter, r *http.Request) {
	ss, err := h.b.Sessions.ListSessions(r.Context(), r.PathValue("name"))
	reply(w, http.StatusOK, ss, err)
}

func (h *Handler) getSession(w http.ResponseWriter, r *http.Request) {
	s, err := h.b.Sessions.GetSession(r.Context(), r.PathValue("name"), r.PathValue("ref"))
	reply(w, http.StatusOK, s, err)
}

func (h *Handler) removeSession(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.b.Sessions.RemoveSession(r.Context(), r.PathValue("name"), r.PathValue("ref")))
}

func (h *Handler) signalSession(w http.ResponseWriter, r *http.Request) {
	var req api.SignalSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	s, err := h.b.Sessions.SignalSession(r.Context(), r.PathValue("name"), r.PathValue("ref"), req)
	reply(w, http.StatusOK, s, err)
}

func (h *Handler) stopSession(w http.ResponseWriter, r *http.Request) {
	var req api.StopSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	// The stop finishes even if the client leaves (the engine bounds it).
	s, err := h.b.Sessions.StopSession(context.WithoutCancel(r.Context()), r.PathValue("name"), r.PathValue("ref"), req)
	reply(w, http.StatusOK, s, err)
}

// attachSession connects to the session through the engine first and
// answers 101 only once that worked, so refusals (unknown session, stdin
// taken) stay plain HTTP errors with a hint. Then it splices bytes like
// exec. Either side closing detaches; nothing here stops a session.
func (h *Handler) attachSession(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.MuxProtocol) {
		writeError(w, api.Errorf(api.CodeInvalid, "send Connection: Upgrade and Upgrade: "+api.MuxProtocol, "attach needs a protocol upgrade"))
		return
	}
	var req api.AttachSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	guest, err := h.b.Sessions.AttachSession(r.Context(), r.PathValue("name"), r.PathValue("ref"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	upgradeAndSplice(w, guest)
}

// sessionLogs streams one log of a session. Errors can only be reported
// before the first byte, so the status line waits for it.
func (h *Handler) sessionLogs(w http.ResponseWriter, r *http.Request) {
	req, err := api.ParseSessionLogsRequest(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	lw := &lazyWriter{w: w, rc: http.NewResponseController(w)}
	err = h.b.Sessions.SessionLogs(r.Context(), r.PathValue("name"), r.PathValue("ref"), req, lw)
	if err != nil && !lw.started {
		writeError(w, err)
		return
	}
	lw.start()
}

// lazyWriter sends the 200 status with the first byte of output and
// flushes every write (followed logs are live).
type lazyWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func (l *lazyWriter) start() {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/octet-stream")
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	l.start()
	n, err := l.w.Write(p)
	if err == nil {
		err = l.rc.Flush()
	}
	return n, err
}
