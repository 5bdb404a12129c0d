package httpapi

import (
	"net/http"
	"strconv"

	"github.com/bangerdev/banger/api"
)

func (h *Handler) egressShow(w http.ResponseWriter, r *http.Request) {
	v, err := h.b.Egress.EgressShow(r.Context(), r.PathValue("name"))
	reply(w, 200, v, err)
}

func (h *Handler) egressChange(w http.ResponseWriter, r *http.Request) {
	var ch api.EgressChange
	if err := decodeBody(r, &ch); err != nil {
		writeError(w, err)
		return
	}
	v, err := h.b.Egress.EgressChange(r.Context(), r.PathValue("name"), ch)
	reply(w, 200, v, err)
}

// egressLog answers ?denied=1&after=ID&limit=N.
func (h *Handler) egressLog(w http.ResponseWriter, r *http.Request) {
	qs := r.URL.Query()
	var q api.EgressLogQuery
	switch qs.Get("denied") {
	case "", "0", "false":
	case "1", "true":
		q.Denied = true
	default:
		writeError(w, api.Errorf(api.CodeInvalid, "pass denied=1 or leave it out", "invalid denied %q", qs.Get("denied")))
		return
	}
	if s := qs.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			writeError(w, api.Errorf(api.CodeInvalid, "pass the id of a log record", "invalid after %q", s))
			return
		}
		q.After = n
	}
	if s := qs.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > api.MaxEgressLogLimit {
			writeError(w, api.Errorf(api.CodeInvalid, "pass a number of records from 1 to "+strconv.Itoa(api.MaxEgressLogLimit), "invalid limit %q", s))
			return
		}
		q.Limit = n
	}
	recs, err := h.b.Egress.EgressLog(r.Context(), r.PathValue("name"), q)
	if recs == nil {
		recs = []api.EgressRecord{}
	}
	reply(w, 200, recs, err)
}

func (h *Handler) egressLearn(w http.ResponseWriter, r *http.Request) {
	l, err := h.b.Egress.EgressLearn(r.Context(), r.PathValue("name"))
	reply(w, 200, l, err)
}
