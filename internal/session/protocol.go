package session

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
)

// The supervisor's socket protocol: the client sends one JSON request on
// one line, the supervisor answers one JSON reply line. For "attach" an
// OK reply is followed by internal/mux frames both ways; "signal" ends
// with the reply; "stop" replies once the command has ended.
const (
	opAttach = "attach"
	opSignal = "signal"
	opStop   = "stop"
)

// maxLine bounds a request or reply line.
const maxLine = 64 << 10

type request struct {
	Op        string                   `json:"op"`
	Attach    api.AttachSessionRequest `json:"attach,omitzero"`
	Signal    int                      `json:"signal,omitempty"`
	TimeoutMS int64                    `json:"timeout_ms,omitempty"`
}

type reply struct {
	Error   *api.Error   `json:"error,omitempty"`
	Session *api.Session `json:"session,omitempty"`
}

// readLine reads one newline-terminated line of at most maxLine bytes
// without reading past it.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, errors.New("line too long")
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// decodeRequest parses and validates one request line from a client.
func decodeRequest(line []byte) (request, error) {
	var req request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return request{}, fmt.Errorf("decode request: %w", err)
	}
	switch req.Op {
	case opAttach:
		if err := validateAttach(req.Attach); err != nil {
			return request{}, err
		}
	case opSignal:
		if req.Signal < 1 || req.Signal > mux.MaxSignal {
			return request{}, invalidf("", "signal %d out of range 1..%d", req.Signal, mux.MaxSignal)
		}
	case opStop:
		if req.TimeoutMS < 0 {
			return request{}, invalidf("", "negative stop timeout")
		}
	default:
		return request{}, invalidf("", "unknown request %q", req.Op)
	}
	return req, nil
}

func validateAttach(a api.AttachSessionRequest) error {
	if a.Tail < 0 {
		return invalidf("", "tail must not be negative")
	}
	if a.FromStart && a.Tail > 0 {
		return invalidf("pass one of them", "replay from the start and tail exclude each other")
	}
	return nil
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// bufferedConn is a conn whose reads go through the bufio.Reader that
// read the reply line (it may hold the first frames already).
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite lets the caller half-close when the conn under it can.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// DecodeStartRequest reads and validates a start request body. Its
// errors are *api.Error values meant for the caller (a 400 answer).
func DecodeStartRequest(r io.Reader) (api.StartSessionRequest, error) {
	var req api.StartSessionRequest
	dec := json.NewDecoder(r)
	if err := dec.Decode(&req); err != nil {
		return api.StartSessionRequest{}, invalidf(`send a JSON body such as {"argv":["sleep","60"],"name":"nap"}`, "decode session request: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return api.StartSessionRequest{}, invalidf("", "decode session request: trailing data after the JSON object")
	}
	if err := validateStart(req); err != nil {
		return api.StartSessionRequest{}, err
	}
	if len(req.Env) == 0 {
		req.Env = nil
	}
	return req, nil
}

func validateStart(req api.StartSessionRequest) error {
	if req.Name != "" {
		if err := ValidateRef(req.Name); err != nil {
			return err
		}
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return invalidf("give the command after --", "empty command")
	}
	for _, a := range req.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return invalidf("", "command argument contains a NUL byte")
		}
	}
	for _, k := range slices.Sorted(maps.Keys(req.Env)) {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return invalidf("use KEY=VALUE", "invalid environment variable name %q", k)
		}
		if strings.IndexByte(req.Env[k], 0) >= 0 {
			return invalidf("", "environment variable %s contains a NUL byte", k)
		}
	}
	if strings.IndexByte(req.Cwd, 0) >= 0 {
		return invalidf("", "working directory contains a NUL byte")
	}
	if req.Cwd != "" && !filepath.IsAbs(req.Cwd) {
		return invalidf("pass an absolute path", "working directory %q is not absolute", req.Cwd)
	}
	return nil
}
