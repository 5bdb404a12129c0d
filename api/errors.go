package api

import (
	"errors"
	"net/http"
)

// The error table: every place that turns an error into an HTTP answer
// (daemon, guest agent) or an HTTP answer back into an error (client,
// agentclient) goes through StatusFor and CodeForStatus, so a code means
// the same status on every hop.

// StatusFor is the HTTP status of an error code. Unknown and empty codes
// are server errors.
func StatusFor(code string) int {
	switch code {
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict:
		return http.StatusConflict
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// CodeForStatus is the error code of an HTTP status, for an answer that
// carries none (an old peer, a proxy, a plain-text error). Any other 4xx
// is the caller's mistake.
func CodeForStatus(status int) string {
	switch {
	case status == http.StatusNotFound:
		return CodeNotFound
	case status == http.StatusConflict:
		return CodeConflict
	case status >= 400 && status < 500:
		return CodeInvalid
	case status == http.StatusServiceUnavailable:
		return CodeUnavailable
	}
	return CodeInternal
}

// Sentinels for errors.Is: an *Error matches the sentinel of its code,
// whatever its message, e.g. errors.Is(err, api.ErrNotFound).
var (
	ErrInvalid     = &Error{Code: CodeInvalid}
	ErrNotFound    = &Error{Code: CodeNotFound}
	ErrConflict    = &Error{Code: CodeConflict}
	ErrUnavailable = &Error{Code: CodeUnavailable}
	ErrInternal    = &Error{Code: CodeInternal}
)

// Is reports whether target is the sentinel of e's code. Only sentinels
// (a code and no message) match by code; any other *Error matches only
// itself, as before.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || t.Message != "" || t.Code == "" {
		return false
	}
	return t.Code == e.Code
}

// AsError returns the *Error in err's chain, or err as an internal error
// when it has none. It is what a server sends for err.
func AsError(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}
