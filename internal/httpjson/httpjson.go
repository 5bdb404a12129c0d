// Package httpjson is the JSON side of banger's HTTP servers (the daemon
// and the guest agent): strict request decoding and the answer writers,
// with errors mapped through api's error table. One copy, so both speak
// the same dialect.
package httpjson

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/bangerdev/banger/api"
)

// WriteJSON answers v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers err as `{"error":{...}}`, with the status of its
// code (api.StatusFor). An error that is no *api.Error is internal.
func WriteError(w http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	if !errors.As(err, new(*api.Error)) && errors.As(err, &tooBig) {
		err = api.Errorf(api.CodeInvalid, "", "request body larger than %d bytes", tooBig.Limit)
	}
	ae := api.AsError(err)
	WriteJSON(w, api.StatusFor(ae.Code), api.ErrorBody{Error: ae})
}

// WriteStatusError answers msg and hint with an explicit status; the code
// is the status's (api.CodeForStatus). For handlers that choose a status
// rather than a code.
func WriteStatusError(w http.ResponseWriter, status int, msg, hint string) {
	WriteJSON(w, status, api.ErrorBody{Error: &api.Error{Message: msg, Hint: hint, Code: api.CodeForStatus(status)}})
}

// DecodeBody reads one JSON object of at most api.MaxBodyBytes from the
// request (see Decode).
func DecodeBody(r *http.Request, v any) error {
	return Decode(http.MaxBytesReader(nil, r.Body, api.MaxBodyBytes), v)
}

// DecodeOptionalBody is DecodeBody for routes whose body may be empty
// (the zero value of v then).
func DecodeOptionalBody(r *http.Request, v any) error {
	empty, err := decode(http.MaxBytesReader(nil, r.Body, api.MaxBodyBytes), v)
	if empty {
		return nil
	}
	return err
}

// Decode reads one JSON object and rejects unknown fields and trailing
// data: a typo in a request is an error, not a silently ignored option.
// Every error is an invalid-input *api.Error. It parses the body of every
// daemon route and of the agent's routes other than exec and session
// start (fuzzed in tests). Those two ignore unknown fields on purpose: a
// VM keeps running its agent across a daemon upgrade, and a newer daemon
// may send a field the older agent does not know yet.
func Decode(r io.Reader, v any) error {
	_, err := decode(r, v)
	return err
}

// decode is Decode that also tells an empty body apart.
func decode(r io.Reader, v any) (empty bool, err error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return false, api.Errorf(api.CodeInvalid, "", "request body larger than %d bytes", mbe.Limit)
		}
		if errors.Is(err, io.EOF) {
			return true, api.Errorf(api.CodeInvalid, "send a JSON object", "empty request body")
		}
		return false, api.Errorf(api.CodeInvalid, "send a valid JSON object", "malformed request body: %v", err)
	}
	if dec.More() {
		return false, api.Errorf(api.CodeInvalid, "send exactly one JSON object", "trailing data after request body")
	}
	return false, nil
}
