package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

func TestDecode(t *testing.T) {
	cases := []struct {
		body string
		ok   bool
		want string
	}{
		{`{"name":"a1","cpus":2}`, true, ""},
		{``, false, "empty request body"},
		{`{"name":`, false, "malformed"},
		{`{"cpus":"two"}`, false, "malformed"},
		{`{"bogus":1}`, false, "unknown field"},
		{`{"name":"a"} {"name":"b"}`, false, "trailing data"},
		{`[1,2]`, false, "malformed"},
	}
	for _, tc := range cases {
		var req api.CreateVMRequest
		err := Decode(strings.NewReader(tc.body), &req)
		if tc.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: got %v, want ok=%v %q", tc.body, err, tc.ok, tc.want)
		}
		var ae *api.Error
		if err != nil && (!errors.As(err, &ae) || ae.Code != api.CodeInvalid) {
			t.Errorf("%q: error is not an invalid-input api.Error: %v", tc.body, err)
		}
	}
}

func TestDecodeBodyLimits(t *testing.T) {
	big := `{"name":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}`
	var req api.CreateVMRequest
	err := DecodeBody(httptest.NewRequest("POST", "/", strings.NewReader(big)), &req)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized body: %v", err)
	}
	if err := DecodeOptionalBody(httptest.NewRequest("POST", "/", strings.NewReader("")), &req); err != nil {
		t.Fatalf("optional empty body: %v", err)
	}
	if err := DecodeOptionalBody(httptest.NewRequest("POST", "/", strings.NewReader(`{"x":1}`)), &req); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("optional body is still strict: %v", err)
	}
}

func TestWriteError(t *testing.T) {
	cases := []struct {
		err    error
		status int
		code   string
	}{
		{api.Errorf(api.CodeNotFound, "", "no VM"), 404, api.CodeNotFound},
		{api.Errorf(api.CodeConflict, "", "busy"), 409, api.CodeConflict},
		{errors.New("boom"), 500, api.CodeInternal},
		{&api.Error{Message: "no code"}, 500, ""},
		{&http.MaxBytesError{Limit: 10}, 400, api.CodeInvalid},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		WriteError(rec, c.err)
		var eb api.ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error == nil {
			t.Fatalf("%v: body %q", c.err, rec.Body.String())
		}
		if rec.Code != c.status || eb.Error.Code != c.code || rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%v: got %d %q, want %d %q", c.err, rec.Code, eb.Error.Code, c.status, c.code)
		}
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"name":"a1"}`, `{"argv":["sh","-c","x"],"tty":true}`, `{`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c api.CreateVMRequest
		_ = Decode(bytes.NewReader(b), &c)
		var e api.ExecRequest
		_ = Decode(bytes.NewReader(b), &e)
	})
}
