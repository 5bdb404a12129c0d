package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/api"
)

// DialFunc opens a connection to the daemon.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Client talks HTTP/JSON to the daemon over its Unix socket.
type Client struct {
	socket string
	dial   DialFunc
	http   *http.Client
}

// New returns a client for the daemon listening on socket.
//
// Every connection is checked before a byte is sent: the process serving
// the socket must be root or the caller's own user (SO_PEERCRED). A socket
// in a directory another user squatted is refused, not talked to.
func New(socket string) *Client {
	return NewWithDialer(socket, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, err
		}
		if err := checkServer(c, socket, os.Geteuid()); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	})
}

// checkServer refuses a daemon socket whose server is neither root nor
// uid.
func checkServer(c net.Conn, socket string, uid int) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("daemon connection to %s is not a unix socket", socket)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("read the daemon's credentials on %s: %w", socket, err)
	}
	if cerr != nil {
		return fmt.Errorf("read the daemon's credentials on %s: %w", socket, cerr)
	}
	if cred.Uid == 0 || int(cred.Uid) == uid {
		return nil
	}
	return &api.Error{
		Code: api.CodeUnavailable,
		Message: fmt.Sprintf("refusing the daemon socket %s: it is served by uid %d (pid %d), neither you (uid %d) nor root; nothing was sent",
			socket, cred.Uid, cred.Pid, uid),
		Hint: "another user may be impersonating banger: remove that socket and its directory (or set XDG_RUNTIME_DIR, BANGER_SOCKET or BANGER_HOME to a directory of your own) and start `banger daemon` again",
	}
}

// NewWithDialer lets callers (tests, orchestrators behind a proxy) choose
// how to reach the daemon; socket is only used in messages.
func NewWithDialer(socket string, dial DialFunc) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		// Streams (events, logs, exec) hold their connection; keep a few
		// idle ones for the short calls in between.
		MaxIdleConns: 4,
	}
	return &Client{socket: socket, dial: dial, http: &http.Client{Transport: tr}}
}

// Socket is the path this client talks to.
func (c *Client) Socket() string { return c.socket }

func (c *Client) url(path string, q url.Values) string {
	u := "http://banger/" + api.Version + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// do sends a request and decodes a JSON answer into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	resp, err := c.send(ctx, method, path, q, in, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode daemon answer to %s %s: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, q url.Values, in any, hdr http.Header) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// unreachable turns "no such file" and "connection refused" into the
// error a user can act on. The CLI never starts a daemon by itself.
func (c *Client) unreachable(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return &api.Error{
			Code:    api.CodeUnavailable,
			Message: fmt.Sprintf("no banger daemon is answering on %s", c.socket),
			Hint:    "start one with `banger daemon` (or `systemctl start banger`), or point --socket / BANGER_SOCKET / BANGER_HOME at a running one",
		}
	}
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return &api.Error{
			Code:    api.CodeUnavailable,
			Message: fmt.Sprintf("permission denied on %s", c.socket),
			Hint:    "the daemon serves only the user it runs as; run banger as that user",
		}
	}
	return fmt.Errorf("talk to daemon: %w", err)
}

// decodeError turns a failed answer into its *api.Error. An answer
// without a code (or without the JSON body) gets the code of its status
// from api's error table, so errors.Is(err, api.ErrNotFound) holds for
// every 404.
func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, api.MaxBodyBytes))
	var eb api.ErrorBody
	if err := json.Unmarshal(data, &eb); err == nil && eb.Error != nil {
		if eb.Error.Code == "" {
			eb.Error.Code = api.CodeForStatus(resp.StatusCode)
		}
		return eb.Error
	}
	return &api.Error{Code: api.CodeForStatus(resp.StatusCode), Message: fmt.Sprintf("daemon answered %s: %s", resp.Status, bytes.TrimSpace(data))}
}

// Version asks the daemon who it is.
func (c *Client) Version(ctx context.Context) (api.VersionInfo, error) {
	var v api.VersionInfo
	return v, c.do(ctx, http.MethodGet, "/version", nil, nil, &v)
}

// ListVMs lists all VMs.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var vms []api.VM
	return vms, c.do(ctx, http.MethodGet, "/vms", nil, nil, &vms)
}

// GetVM returns one VM by name or id.
func (c *Client) GetVM(ctx context.Context, name string) (api.VM, error) {
	var vm api.VM
	return vm, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name), nil, nil, &vm)
}

// CreateVM starts a create operation and returns its id at once.
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest) (api.OperationRef, error) {
	var ref api.OperationRef
	return ref, c.do(ctx, http.MethodPost, "/vms", nil, req, &ref)
}

// StartVM boots a stopped VM and waits until its agent answers.
func (c *Client) StartVM(ctx context.Context, name string) (api.VM, error) {
	return c.StartVMWith(ctx, name, api.StartVMRequest{})
}

// StartVMWith is StartVM with options (a larger work disk).
func (c *Client) StartVMWith(ctx context.Context, name string, req api.StartVMRequest) (api.VM, error) {
	var vm api.VM
	return vm, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/start", nil, req, &vm)
}

// StopVM powers a VM off; force kills it at once.
func (c *Client) StopVM(ctx context.Context, name string, force bool) (api.VM, error) {
	var vm api.VM
	return vm, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/stop", nil, api.StopVMRequest{Force: force}, &vm)
}

// RestartVM stops and starts a VM.
func (c *Client) RestartVM(ctx context.Context, name string) (api.VM, error) {
	var vm api.VM
	return vm, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/restart", nil, struct{}{}, &vm)
}

// DeleteVM stops (if needed) and removes a VM and all it owns.
func (c *Client) DeleteVM(ctx context.Context, name string, force bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "1")
	}
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(name), q, nil, nil)
}

// Health reports the VMM process and the guest agent of a VM.
func (c *Client) Health(ctx context.Context, name string) (api.Health, error) {
	var h api.Health
	return h, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name)+"/health", nil, nil, &h)
}

// SSHInfo returns what OpenSSH needs to reach a VM with a pinned host key.
func (c *Client) SSHInfo(ctx context.Context, name string) (api.SSHInfo, error) {
	var s api.SSHInfo
	return s, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name)+"/ssh", nil, nil, &s)
}

// Logs streams a VM's console log into w; with follow it keeps streaming
// until ctx ends or the VM stops.
func (c *Client) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.send(ctx, http.MethodGet, "/vms/"+url.PathEscape(name)+"/logs", q, nil, nil)
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

// Exec starts a guest command and returns the mux stream (see
// internal/mux) once the daemon and the agent switched protocols.
func (c *Client) Exec(ctx context.Context, name string, req api.ExecRequest) (io.ReadWriteCloser, error) {
	return c.upgrade(ctx, "/vms/"+url.PathEscape(name)+"/exec", req, "exec")
}

// upgrade POSTs in to path asking to switch to api.MuxProtocol and
// returns the upgraded stream.
func (c *Client) upgrade(ctx context.Context, path string, in any, what string) (io.ReadWriteCloser, error) {
	hdr := http.Header{}
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", api.MuxProtocol)
	resp, err := c.send(ctx, http.MethodPost, path, nil, in, hdr)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: daemon answered %s instead of switching protocols", what, resp.Status)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: upgraded body is not writable", what)
	}
	return rwc, nil
}

// ListImages lists images.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var imgs []api.Image
	return imgs, c.do(ctx, http.MethodGet, "/images", nil, nil, &imgs)
}

// GetImage returns one image with its package manifest.
func (c *Client) GetImage(ctx context.Context, name string) (api.Image, error) {
	var img api.Image
	return img, c.do(ctx, http.MethodGet, "/images/"+url.PathEscape(name), nil, nil, &img)
}

// BuildImage starts an image build operation.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImageRequest) (api.OperationRef, error) {
	var ref api.OperationRef
	return ref, c.do(ctx, http.MethodPost, "/images/build", nil, req, &ref)
}

// DeleteImage removes an image no VM uses.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/images/"+url.PathEscape(name), nil, nil, nil)
}

// ExportImage writes an image into a host directory.
func (c *Client) ExportImage(ctx context.Context, name, dir string) error {
	return c.do(ctx, http.MethodPost, "/images/"+url.PathEscape(name)+"/export", nil, api.PathRequest{Path: dir}, nil)
}

// VerifyImage starts an operation that boots the image once and checks
// it; the outcome is recorded on the image.
func (c *Client) VerifyImage(ctx context.Context, name string) (api.OperationRef, error) {
	var ref api.OperationRef
	return ref, c.do(ctx, http.MethodPost, "/images/"+url.PathEscape(name)+"/verify", nil, struct{}{}, &ref)
}

// PromoteImage makes a staged image managed and the default.
func (c *Client) PromoteImage(ctx context.Context, name string) (api.Image, error) {
	var img api.Image
	return img, c.do(ctx, http.MethodPost, "/images/"+url.PathEscape(name)+"/promote", nil, struct{}{}, &img)
}

// RegisterImage registers an image made elsewhere from host files.
func (c *Client) RegisterImage(ctx context.Context, req api.RegisterImageRequest) (api.Image, error) {
	var img api.Image
	return img, c.do(ctx, http.MethodPost, "/images/register", nil, req, &img)
}

// ImportImage registers an exported image directory.
func (c *Client) ImportImage(ctx context.Context, path string) (api.Image, error) {
	var img api.Image
	return img, c.do(ctx, http.MethodPost, "/images/import", nil, api.PathRequest{Path: path}, &img)
}

// ListOperations returns the most recent operations, newest first.
func (c *Client) ListOperations(ctx context.Context) ([]api.Operation, error) {
	var ops []api.Operation
	return ops, c.do(ctx, http.MethodGet, "/operations", nil, nil, &ops)
}

// GetOperation returns an operation with its stages.
func (c *Client) GetOperation(ctx context.Context, id string) (api.Operation, error) {
	var op api.Operation
	return op, c.do(ctx, http.MethodGet, "/operations/"+url.PathEscape(id), nil, nil, &op)
}

// WatchOperation streams an operation's events to fn, starting with its
// stages so far, and returns the finished operation. It works the same for
// the client that started the operation and for one that reattaches.
func (c *Client) WatchOperation(ctx context.Context, id string, fn func(api.Event)) (api.Operation, error) {
	resp, err := c.send(ctx, http.MethodGet, "/operations/"+url.PathEscape(id)+"/events", nil, nil, nil)
	if err != nil {
		return api.Operation{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return api.Operation{}, fmt.Errorf("decode operation event: %w", err)
		}
		if fn != nil {
			fn(ev)
		}
		if ev.Done && ev.Operation != nil {
			return *ev.Operation, nil
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() != nil {
		return api.Operation{}, fmt.Errorf("watch operation %s: %w", id, ctx.Err())
	}
	// The stream ended or broke without a final event (the daemon went
	// away): report what the record says now, which is a typed
	// unavailable error while the daemon is down.
	return c.GetOperation(ctx, id)
}

// OperationError turns a failed operation into an *api.Error.
func OperationError(op api.Operation) error {
	if op.State != api.OpFailed {
		return nil
	}
	msg := op.Error
	if msg == "" {
		msg = "operation failed"
	}
	return &api.Error{Code: api.CodeInternal, Message: msg, Hint: op.Hint, OperationID: op.ID}
}

// Doctor runs the daemon's host checks.
func (c *Client) Doctor(ctx context.Context) ([]api.Check, error) {
	var checks []api.Check
	return checks, c.do(ctx, http.MethodGet, "/doctor", nil, nil, &checks)
}
