package agentclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
)

// Guest sessions (see internal/session and internal/agent/sessions.go).
// Failed answers are *StatusError values wrapping the agent's *api.Error:
// 400 (CodeInvalid) for a failed preflight, 404 for an unknown session,
// 409 (CodeConflict) for a taken name, a taken stdin or an ended session.

// StartSession preflights and launches a session and returns it once the
// launch has an outcome (running, or exited/failed within the guest's
// launch window).
func (c *Client) StartSession(ctx context.Context, req api.StartSessionRequest) (api.Session, error) {
	var s api.Session
	err := c.sessionCall(ctx, http.MethodPost, agentapi.AgentSessionsPath, req, http.StatusCreated, &s)
	return s, err
}

// ListSessions returns every session the guest knows, oldest first.
func (c *Client) ListSessions(ctx context.Context) ([]api.Session, error) {
	var ss []api.Session
	err := c.sessionCall(ctx, http.MethodGet, agentapi.AgentSessionsPath, nil, http.StatusOK, &ss)
	return ss, err
}

// GetSession returns one session by id or name.
func (c *Client) GetSession(ctx context.Context, ref string) (api.Session, error) {
	var s api.Session
	err := c.sessionCall(ctx, http.MethodGet, sessionPath(ref, ""), nil, http.StatusOK, &s)
	return s, err
}

// SignalSession sends sig to the session's process group.
func (c *Client) SignalSession(ctx context.Context, ref string, sig int) (api.Session, error) {
	var s api.Session
	err := c.sessionCall(ctx, http.MethodPost, sessionPath(ref, "signal"), api.SignalSessionRequest{Signal: sig}, http.StatusOK, &s)
	return s, err
}

// StopSession sends SIGTERM, then SIGKILL after timeout (0: the guest's
// default of 10s), and returns the ended session. ctx should allow for
// the timeout.
func (c *Client) StopSession(ctx context.Context, ref string, timeout time.Duration) (api.Session, error) {
	var s api.Session
	err := c.sessionCall(ctx, http.MethodPost, sessionPath(ref, "stop"), api.StopSessionRequest{TimeoutSeconds: timeout.Seconds()}, http.StatusOK, &s)
	return s, err
}

// RemoveSession deletes an ended session and its logs from the guest.
func (c *Client) RemoveSession(ctx context.Context, ref string) error {
	return c.sessionCall(ctx, http.MethodDelete, sessionPath(ref, ""), nil, http.StatusNoContent, nil)
}

// SessionLogs copies one stream of a session's logged output to w; with
// req.Follow it keeps copying live output until the session ends or ctx
// does.
func (c *Client) SessionLogs(ctx context.Context, ref string, req api.SessionLogsRequest, w io.Writer) error {
	q := req.Query()
	u := "http://agent" + sessionPath(ref, "logs")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return fmt.Errorf("session logs: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(resp)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("session logs: %w", err)
	}
	return nil
}

// AttachSession attaches to a session. On "101 Switching Protocols" it
// returns the stream positioned at the first mux frame: Stdout/Stderr
// frames (replay, then live) and an Exit frame once the session has
// ended; the caller may send Stdin (with req.Stdin), StdinClose, Signal
// and Resize frames. mux.RunExec drives it (with a nil stdin when
// req.Stdin is false). Closing the stream detaches and leaves the session
// running. ctx bounds the handshake only.
func (c *Client) AttachSession(ctx context.Context, ref string, req api.AttachSessionRequest) (net.Conn, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode attach request: %w", err)
	}
	return c.upgrade(ctx, sessionPath(ref, "attach"), body, "attach session")
}

func sessionPath(ref, action string) string {
	p := agentapi.AgentSessionsPath + "/" + url.PathEscape(ref)
	if action != "" {
		p += "/" + action
	}
	return p
}

// sessionCall is one JSON request and answer.
func (c *Client) sessionCall(ctx context.Context, method, path string, in any, want int, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		return statusError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, api.MaxBodyBytes)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}
