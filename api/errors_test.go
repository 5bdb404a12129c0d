package api

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

// TestErrorTableRoundTrip: every code survives code → status → code, so
// an answer without a code body still means the same thing.
func TestErrorTableRoundTrip(t *testing.T) {
	for _, code := range []string{CodeInvalid, CodeNotFound, CodeConflict, CodeUnavailable, CodeInternal} {
		if got := CodeForStatus(StatusFor(code)); got != code {
			t.Errorf("%s: status %d maps back to %s", code, StatusFor(code), got)
		}
	}
	if StatusFor("") != http.StatusInternalServerError || StatusFor("bogus") != http.StatusInternalServerError {
		t.Error("unknown codes must be server errors")
	}
	for status, want := range map[int]string{
		http.StatusRequestEntityTooLarge: CodeInvalid,
		http.StatusMethodNotAllowed:      CodeInvalid,
		http.StatusBadGateway:            CodeInternal,
		http.StatusOK:                    CodeInternal,
	} {
		if got := CodeForStatus(status); got != want {
			t.Errorf("status %d: got %s, want %s", status, got, want)
		}
	}
}

func TestErrorSentinels(t *testing.T) {
	err := fmt.Errorf("get vm: %w", Errorf(CodeNotFound, "", "no VM %q", "dev"))
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Fatalf("sentinels: %v", err)
	}
	// A non-sentinel *Error matches only itself.
	a, b := Errorf(CodeInvalid, "", "a"), Errorf(CodeInvalid, "", "a")
	if errors.Is(a, b) || !errors.Is(a, a) {
		t.Fatal("non-sentinel errors compare by identity")
	}
	if ae := AsError(errors.New("boom")); ae.Code != CodeInternal || ae.Message != "boom" {
		t.Fatalf("AsError: %+v", ae)
	}
	if ae := AsError(err); ae.Code != CodeNotFound || ae.Message != `no VM "dev"` {
		t.Fatalf("AsError keeps the *Error: %+v", ae)
	}
}
