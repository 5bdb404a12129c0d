// Package agentclient is the host side of the guest agent channel: a
// yamux client session over one connection to the guest (QEMU's
// virtio-serial chardev socket, or a vsock connection), with HTTP on its
// streams.
package agentclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/tarx"
)

// DialFunc connects to the guest agent's transport.
type DialFunc func(ctx context.Context) (net.Conn, error)

// defaultTimeout bounds Health and the exec handshake when the caller's
// context has no deadline: a guest that stopped reading must not hang a
// request forever.
const defaultTimeout = 30 * time.Second

// maxErrorBody bounds what is read of a failed answer.
const maxErrorBody = 64 << 10

// Client is one yamux session with a guest agent. Its methods are safe for
// concurrent use. Once the session dies (Done is closed) every call fails;
// dial a new Client.
type Client struct {
	sess *yamux.Session
	http *http.Client
}

// Dial connects with dial, runs the link preamble (see mux.LinkHost) and
// starts a yamux client session. It returns once the agent answered the
// preamble, so it blocks while the guest has not opened its end yet;
// bound it with ctx (or use WaitReady).
func Dial(ctx context.Context, dial DialFunc) (*Client, error) {
	conn, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial agent: %w", err)
	}
	return New(ctx, conn)
}

// DialUnix dials the agent through a Unix socket (QEMU's chardev).
func DialUnix(ctx context.Context, path string) (*Client, error) {
	return Dial(ctx, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
}

// New runs the link preamble on a fresh connection to the agent and starts
// a yamux client session on it. The Client owns conn, also on error.
func New(ctx context.Context, conn net.Conn) (*Client, error) {
	linked, err := mux.LinkHost(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	cfg := yamux.DefaultConfig()
	// Keepalive turns a guest that stopped answering into a closed
	// session, which is what tells the daemon to redial.
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 15 * time.Second
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug)
	// A larger receive window keeps bulk downloads (exec and session
	// output) flowing between the daemon's reads.
	cfg.MaxStreamWindowSize = 4 << 20
	sess, err := yamux.Client(linked, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux session: %w", err)
	}
	c := &Client{sess: sess}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return c.OpenStream(ctx)
		},
		// Streams are cheap; a pooled one could outlive the session.
		DisableKeepAlives: true,
	}}
	return c, nil
}

// Close ends the session and the connection under it.
func (c *Client) Close() error { return c.sess.Close() }

// IsClosed reports whether the session is dead.
func (c *Client) IsClosed() bool { return c.sess.IsClosed() }

// Done is closed when the session dies.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// OpenStream opens a raw stream to the agent's HTTP server, for callers
// that proxy HTTP themselves. Opening does not wait for the agent (yamux
// streams are established lazily); the first read does.
func (c *Client) OpenStream(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ys, err := c.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open agent stream: %w", err)
	}
	s := &stream{Stream: ys}
	if err := ctx.Err(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// AcceptStream waits for the next stream the guest opens (the egress
// gateway's: one per guest connection or DNS query), wrapped like
// OpenStream's. It fails when ctx ends or the session dies; the daemon
// runs it in a loop for as long as the session lives.
func (c *Client) AcceptStream(ctx context.Context) (net.Conn, error) {
	ys, err := c.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("accept agent stream: %w", err)
	}
	return &stream{Stream: ys}, nil
}

// stream gives a yamux stream the net.Conn Close contract. yamux's Close
// only half-closes (it sends FIN and keeps reading until the peer's FIN),
// so a Read blocked on an agent that never answers would stay blocked;
// here Close also fails pending and later reads.
type stream struct {
	*yamux.Stream
	closed atomic.Bool
}

func (s *stream) Read(b []byte) (int, error) {
	n, err := s.Stream.Read(b)
	if err != nil && s.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

// CloseWrite sends FIN and keeps the reading half open (a yamux stream's
// own Close): the egress gateway's splice half-closes this way.
func (s *stream) CloseWrite() error { return s.Stream.Close() }

func (s *stream) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	_ = s.Stream.SetReadDeadline(time.Now())
	return s.Stream.Close()
}

// Health asks the agent's /healthz.
func (c *Client) Health(ctx context.Context) (api.AgentHealth, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+agentapi.AgentHealthPath, nil)
	if err != nil {
		return api.AgentHealth{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return api.AgentHealth{}, fmt.Errorf("agent health: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return api.AgentHealth{}, fmt.Errorf("agent health: %w", statusError(resp))
	}
	var h api.AgentHealth
	if err := json.NewDecoder(io.LimitReader(resp.Body, api.MaxBodyBytes)).Decode(&h); err != nil {
		return api.AgentHealth{}, fmt.Errorf("agent health: decode: %w", err)
	}
	return h, nil
}

// StatusError is a non-success answer from the agent. It unwraps to the
// agent's *api.Error, so errors.As(err, &apiErr) finds message and hint.
type StatusError struct {
	StatusCode int
	Err        *api.Error
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("agent answered %d: %s", e.StatusCode, e.Err.Message)
}

func (e *StatusError) Unwrap() error { return e.Err }

// statusError builds a StatusError from a failed response, reading the
// `{"error":{...}}` body when there is one.
func statusError(resp *http.Response) *StatusError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var eb api.ErrorBody
	if json.Unmarshal(body, &eb) != nil || eb.Error == nil || eb.Error.Message == "" {
		msg := strings.TrimSpace(string(body))
		if msg == "" {
			msg = resp.Status
		}
		eb.Error = &api.Error{Message: msg}
	}
	if eb.Error.Code == "" {
		eb.Error.Code = api.CodeForStatus(resp.StatusCode)
	}
	return &StatusError{StatusCode: resp.StatusCode, Err: eb.Error}
}

// Exec starts req in the guest. On "101 Switching Protocols" it returns
// the stream positioned at the first mux frame (see mux.RunExec); any
// other answer is a *StatusError. ctx bounds the handshake only: the
// stream lives until it is closed. Closing the stream before the exit
// frame kills the guest command.
func (c *Client) Exec(ctx context.Context, req api.ExecRequest) (net.Conn, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode exec request: %w", err)
	}
	return c.upgrade(ctx, agentapi.AgentExecPath, body, "agent exec")
}

// upgrade POSTs body to path asking for the MuxProtocol upgrade and
// returns the upgraded stream. ctx bounds the handshake only.
func (c *Client) upgrade(ctx context.Context, path string, body []byte, what string) (net.Conn, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	s, err := c.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	// Until the handshake is done, ctx ending aborts it by closing the
	// stream (which unblocks any read or write on it).
	stop := context.AfterFunc(ctx, func() { s.Close() })
	conn, err := upgradeHandshake(s, path, body, what)
	if !stop() {
		// ctx ended during the handshake; the stream is closed.
		if err == nil {
			conn.Close()
		}
		return nil, fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return conn, nil
}

func upgradeHandshake(s net.Conn, path string, body []byte, what string) (net.Conn, error) {
	hreq, err := http.NewRequest(http.MethodPost, "http://agent"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", api.MuxProtocol)
	if err := hreq.Write(s); err != nil {
		return nil, fmt.Errorf("%s: send request: %w", what, err)
	}
	br := bufio.NewReader(s)
	resp, err := http.ReadResponse(br, hreq)
	if err != nil {
		return nil, fmt.Errorf("%s: read response: %w", what, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, statusError(resp)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), api.MuxProtocol) {
		return nil, fmt.Errorf("%s: switched to %q, want %q", what, resp.Header.Get("Upgrade"), api.MuxProtocol)
	}
	// The agent may have sent frames right behind the headers; they sit
	// in br and must come first.
	if n := br.Buffered(); n > 0 {
		head, _ := br.Peek(n)
		return &prefixConn{Conn: s, r: io.MultiReader(bytes.NewReader(bytes.Clone(head)), s)}, nil
	}
	return s, nil
}

// prefixConn is a conn whose first bytes were already read into a buffer.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultTimeout)
}

// WaitReady dials and health-checks until the agent answers or ctx ends,
// and returns the live Client. At boot the socket can accept connections
// long before the guest opens its end, and bytes sent then are only read
// once it does; each attempt is therefore bounded by perAttempt, after
// which the session is dropped and redialed. When ctx ends it returns
// ctx's error together with the last attempt's.
func WaitReady(ctx context.Context, dial DialFunc, perAttempt time.Duration) (*Client, error) {
	if perAttempt <= 0 {
		perAttempt = 3 * time.Second
	}
	var last error
	for {
		c, err := tryOnce(ctx, dial, perAttempt)
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent not ready: %w (last attempt: %w)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tryOnce(ctx context.Context, dial DialFunc, perAttempt time.Duration) (*Client, error) {
	actx, cancel := context.WithTimeout(ctx, perAttempt)
	defer cancel()
	c, err := Dial(actx, dial)
	if err != nil {
		return nil, err
	}
	if _, err := c.Health(actx); err != nil {
		c.Close()
		if actx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("agent did not answer within %s", perAttempt)
		}
		return nil, err
	}
	return c, nil
}

// Import streams a tar archive into dir in the guest (created when mkdir
// is set). The body goes over its own yamux stream with no exec framing:
// bulk data pays only for HTTP chunking.
func (c *Client) Import(ctx context.Context, dir string, mkdir bool, tarStream io.Reader) (tarx.Stats, error) {
	q := url.Values{"dir": {dir}}
	if mkdir {
		q.Set("mkdir", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://agent"+agentapi.AgentFilesPath+"?"+q.Encode(), tarStream)
	if err != nil {
		return tarx.Stats{}, err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := c.http.Do(req)
	if err != nil {
		return tarx.Stats{}, fmt.Errorf("import into %s: %w", dir, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return tarx.Stats{}, statusError(resp)
	}
	var st tarx.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode import answer: %w", err)
	}
	return st, nil
}
