package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// baseEnv is what every command starts from: the agent runs under systemd
// with an almost empty environment, and commands expect a login-like one.
var baseEnv = map[string]string{
	"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME": "/root",
	"USER": "root",
	"LANG": "C.UTF-8",
}

// DecodeExecRequest reads and validates an ExecRequest body. Its errors
// are meant for the caller (they end up in a 400 answer).
func DecodeExecRequest(r io.Reader) (api.ExecRequest, error) {
	var req api.ExecRequest
	dec := json.NewDecoder(r)
	if err := dec.Decode(&req); err != nil {
		return api.ExecRequest{}, fmt.Errorf("decode exec request: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return api.ExecRequest{}, errors.New("decode exec request: trailing data after the JSON object")
	}
	if err := validateExec(req); err != nil {
		return api.ExecRequest{}, err
	}
	if len(req.Env) == 0 {
		req.Env = nil // one canonical form for "no extra environment"
	}
	return req, nil
}

func validateExec(req api.ExecRequest) error {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return errors.New("empty command")
	}
	// A NUL cannot reach execve; catching it here gives a clear answer.
	for _, a := range req.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("command argument contains a NUL byte")
		}
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("invalid environment variable name %q", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("environment variable %s contains a NUL byte", k)
		}
	}
	if strings.IndexByte(req.Dir, 0) >= 0 {
		return errors.New("working directory contains a NUL byte")
	}
	return nil
}

// commandEnv is the base environment overlaid with the request's, in a
// stable order.
func commandEnv(req api.ExecRequest) []string {
	env := maps.Clone(baseEnv)
	if req.TTY {
		env["TERM"] = "xterm-256color"
	}
	maps.Copy(env, req.Env)
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// startError is a command that could not start, with the shell's exit
// code for it.
type startError struct {
	code int
	msg  string
}

func (e *startError) Error() string { return e.msg }

func notFound(name string, err error) *startError {
	return &startError{code: 127, msg: fmt.Sprintf("exec: %q: %v", name, err)}
}

func cannotExec(name string, err error) *startError {
	return &startError{code: 126, msg: fmt.Sprintf("exec: %q: %v", name, err)}
}

// lookPath resolves the command against its own PATH and working
// directory (system.LookPathIn); a failure is a startError with the
// shell's exit code: 127 when nothing of that name exists, 126 when it
// exists but cannot run.
func lookPath(name, pathEnv, dir string) (string, error) {
	p, err := system.LookPathIn(name, pathEnv, dir)
	switch {
	case err == nil:
		return p, nil
	case errors.Is(err, fs.ErrNotExist):
		return "", notFound(name, err)
	}
	return "", cannotExec(name, err)
}

// execFailure maps an exec failure that lookPath did not catch (the file is
// there and executable, yet execve failed) to 126.
func execFailure(name string, err error) *startError {
	var se *startError
	if errors.As(err, &se) {
		return se
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return cannotExec(name, err)
}
