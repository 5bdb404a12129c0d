package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

func TestDecodeExecRequest(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want api.ExecRequest
		err  string
	}{
		{name: "minimal", in: `{"argv":["true"]}`, want: api.ExecRequest{Argv: []string{"true"}}},
		{name: "full", in: `{"argv":["sh","-c","x"],"env":{"A":"1"},"dir":"/tmp","tty":true,"rows":24,"cols":80,"stdin":true}`,
			want: api.ExecRequest{Argv: []string{"sh", "-c", "x"}, Env: map[string]string{"A": "1"}, Dir: "/tmp", TTY: true, Rows: 24, Cols: 80, Stdin: true}},
		{name: "unknown field ignored", in: `{"argv":["true"],"future":1}`, want: api.ExecRequest{Argv: []string{"true"}}},
		{name: "trailing space", in: "{\"argv\":[\"true\"]}\n", want: api.ExecRequest{Argv: []string{"true"}}},
		{name: "empty body", in: ``, err: "decode exec request"},
		{name: "null", in: `null`, err: "empty command"},
		{name: "empty argv", in: `{"argv":[]}`, err: "empty command"},
		{name: "empty argv0", in: `{"argv":[""]}`, err: "empty command"},
		{name: "NUL in arg", in: `{"argv":["a\u0000b"]}`, err: "NUL"},
		{name: "bad env name", in: `{"argv":["true"],"env":{"A=B":"1"}}`, err: "environment variable name"},
		{name: "empty env name", in: `{"argv":["true"],"env":{"":"1"}}`, err: "environment variable name"},
		{name: "NUL in env", in: `{"argv":["true"],"env":{"A":"\u0000"}}`, err: "NUL"},
		{name: "NUL in dir", in: `{"argv":["true"],"dir":"\u0000"}`, err: "NUL"},
		{name: "rows overflow", in: `{"argv":["true"],"rows":70000}`, err: "decode exec request"},
		{name: "two objects", in: `{"argv":["true"]}{}`, err: "trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeExecRequest(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzDecodeExecRequest: no panic; an accepted request is valid and
// survives a JSON round trip unchanged.
func FuzzDecodeExecRequest(f *testing.F) {
	f.Add(`{"argv":["sh","-c","echo hi"],"env":{"A":"1"},"tty":true,"rows":24}`)
	f.Add(`{"argv":[]}`)
	f.Add(`{"argv":["x"]} trailing`)
	f.Add(`[1,2,3]`)
	f.Fuzz(func(t *testing.T, in string) {
		req, err := DecodeExecRequest(strings.NewReader(in))
		if err != nil {
			return
		}
		if len(req.Argv) == 0 || req.Argv[0] == "" {
			t.Fatal("accepted an empty command")
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeExecRequest(strings.NewReader(string(b)))
		if err != nil {
			t.Fatalf("re-encoded request rejected: %v", err)
		}
		if !reflect.DeepEqual(req, again) {
			t.Fatalf("round trip: %+v vs %+v", req, again)
		}
		env := commandEnv(req)
		if !slices.IsSorted(env) {
			t.Fatal("environment not sorted")
		}
	})
}

// TestLookPath checks what the agent adds to system.LookPathIn (whose
// own test covers the search): the shell's exit codes, 127 for a
// command that is not there and 126 for one that cannot run.
func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tool"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o644)
	tests := []struct {
		name, file string
		code       int
	}{
		{"found", "tool", 0},
		{"missing", "nope", 127},
		{"not executable", "data", 126},
		{"directory", dir, 126},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := lookPath(tt.file, dir, dir)
			if tt.code == 0 {
				if err != nil || got != filepath.Join(dir, "tool") {
					t.Fatalf("got %q %v", got, err)
				}
				return
			}
			var se *startError
			if !errors.As(err, &se) || se.code != tt.code {
				t.Fatalf("got %q %v, want code %d", got, err, tt.code)
			}
		})
	}
}
