package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/bangerdev/banger/api"
)

// Guest sessions: long-lived guest commands that outlive the daemon, the
// guest agent and every client. S (ref) is a session name or id.

func sessionsPath(vm string) string { return "/vms/" + url.PathEscape(vm) + "/sessions" }

func sessionPath(vm, ref, action string) string {
	p := sessionsPath(vm) + "/" + url.PathEscape(ref)
	if action != "" {
		p += "/" + action
	}
	return p
}

// StartSession preflights and launches a session in VM vm. An empty
// req.Cwd means /root/repo when the guest has it, else /root. A failed
// preflight (missing cwd or command, name taken) is an *api.Error and
// nothing is started; a command that dies at once comes back with state
// failed and its first lines of stderr.
func (c *Client) StartSession(ctx context.Context, vm string, req api.StartSessionRequest) (api.Session, error) {
	var s api.Session
	return s, c.do(ctx, http.MethodPost, sessionsPath(vm), nil, req, &s)
}

// ListSessions returns the VM's sessions, oldest first, including the
// ones the daemon remembers but the guest lost (state lost).
func (c *Client) ListSessions(ctx context.Context, vm string) ([]api.Session, error) {
	var ss []api.Session
	return ss, c.do(ctx, http.MethodGet, sessionsPath(vm), nil, nil, &ss)
}

// GetSession returns one session.
func (c *Client) GetSession(ctx context.Context, vm, ref string) (api.Session, error) {
	var s api.Session
	return s, c.do(ctx, http.MethodGet, sessionPath(vm, ref, ""), nil, nil, &s)
}

// RemoveSession deletes an ended session and its logs from the guest.
func (c *Client) RemoveSession(ctx context.Context, vm, ref string) error {
	return c.do(ctx, http.MethodDelete, sessionPath(vm, ref, ""), nil, nil, nil)
}

// SignalSession sends sig to the session's process group.
func (c *Client) SignalSession(ctx context.Context, vm, ref string, sig int) (api.Session, error) {
	var s api.Session
	return s, c.do(ctx, http.MethodPost, sessionPath(vm, ref, "signal"), nil, api.SignalSessionRequest{Signal: sig}, &s)
}

// StopSession sends SIGTERM, then SIGKILL after timeout (0: 10s), and
// returns the ended session.
func (c *Client) StopSession(ctx context.Context, vm, ref string, timeout time.Duration) (api.Session, error) {
	var s api.Session
	return s, c.do(ctx, http.MethodPost, sessionPath(vm, ref, "stop"), nil, api.StopSessionRequest{TimeoutSeconds: timeout.Seconds()}, &s)
}

// SessionLogs copies one stream of a session's kept output to w; with
// req.Follow it goes on with live output until the session ends or ctx
// does.
func (c *Client) SessionLogs(ctx context.Context, vm, ref string, req api.SessionLogsRequest, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, sessionPath(vm, ref, "logs"), req.Query(), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// AttachSession attaches to a session and returns the internal/mux
// stream once the daemon and the guest switched protocols: Stdout and
// Stderr frames (replay, then live), then one Exit frame when the
// session has ended; the caller may send Stdin (with req.Stdin),
// StdinClose, Signal and Resize frames. internal/attach drives it.
// Closing the stream detaches; it never stops the session. A refusal
// (unknown session, stdin taken) is an *api.Error with a hint.
func (c *Client) AttachSession(ctx context.Context, vm, ref string, req api.AttachSessionRequest) (io.ReadWriteCloser, error) {
	return c.upgrade(ctx, sessionPath(vm, ref, "attach"), req, "attach")
}

// WatchEvents streams the daemon's event bus (session state changes) to
// fn until ctx ends or the daemon goes away. vm limits it to one VM; ""
// means all.
func (c *Client) WatchEvents(ctx context.Context, vm string, fn func(api.BusEvent)) error {
	q := url.Values{}
	if vm != "" {
		q.Set("vm", vm)
	}
	resp, err := c.send(ctx, http.MethodGet, "/events", q, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev api.BusEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("decode event: %w", err)
		}
		fn(ev)
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch events: %w", err)
	}
	return nil
}
