package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// APIError is a non-2xx answer of the Firecracker API. FaultMessage is
// Firecracker's own explanation (the Error schema's fault_message).
type APIError struct {
	Method       string
	Path         string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("firecracker %s %s: %d: %s", e.Method, e.Path, e.Status, msg)
}

// maxFaultBody bounds how much of an error body is read; Firecracker's
// fault messages are one line.
const maxFaultBody = 64 << 10

// ParseFault extracts fault_message from an error body. A body that is
// not the documented JSON is returned trimmed, so nothing the VMM said is
// lost.
func ParseFault(body []byte) string {
	var e struct {
		FaultMessage *string `json:"fault_message"`
	}
	if err := json.Unmarshal(body, &e); err == nil && e.FaultMessage != nil {
		return *e.FaultMessage
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}

// Client speaks Firecracker's HTTP API on its Unix socket
// (src/firecracker/swagger/firecracker.yaml).
type Client struct {
	socket string
	hc     *http.Client
	// long has no overall timeout: writing or mapping a snapshot of
	// many GiB takes longer than any fixed bound; the caller's context
	// carries the deadline.
	long *http.Client
}

// NewClient returns a client of the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		// One VMM, one socket: no pooling subtleties worth having.
		DisableKeepAlives: true,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}, long: &http.Client{Transport: tr}}
}

// Request bodies, as the swagger definitions name them. Optional fields
// are pointers or omitempty so an unset value is absent, not a zero.

// MachineConfig is the MachineConfiguration definition.
type MachineConfig struct {
	VCPUCount       int   `json:"vcpu_count"`
	MemSizeMiB      int   `json:"mem_size_mib"`
	SMT             *bool `json:"smt,omitempty"`
	TrackDirtyPages bool  `json:"track_dirty_pages,omitempty"`
}

// BootSource is the BootSource definition.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is the Drive definition (virtio-block).
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"`
}

// NetworkInterface is the NetworkInterface definition.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the Vsock definition: the guest's vsock device, proxied to a
// Unix socket on the host (hybrid vsock).
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Logger is the Logger definition.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
}

// Metrics is the Metrics definition.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Actions (InstanceActionInfo.action_type).
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// VM states for PATCH /vm.
const (
	StatePaused  = "Paused"
	StateResumed = "Resumed"
)

// Snapshot types.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// SnapshotCreate is the SnapshotCreateParams definition.
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// MemoryBackend is the MemoryBackend definition.
type MemoryBackend struct {
	BackendType string `json:"backend_type"` // "File" or "Uffd"
	BackendPath string `json:"backend_path"`
}

// NetworkOverride is the NetworkOverride definition.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride is the VsockOverride definition.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoad is the SnapshotLoadParams definition. The deprecated
// mem_file_path is not offered: mem_backend replaces it.
type SnapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       MemoryBackend     `json:"mem_backend"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
}

// VMConfig is the part of the FullVmConfiguration definition (GET
// /vm/config) that a snapshot depends on: the paths and names the
// restored devices reopen.
type VMConfig struct {
	Drives            []Drive            `json:"drives"`
	MachineConfig     *MachineConfig     `json:"machine-config,omitempty"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
}

// InstanceInfo is the InstanceInfo definition (GET /).
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
}

// PutMachineConfig configures vCPUs and memory (pre-boot).
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutBootSource sets kernel, initrd and command line (pre-boot).
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive adds or replaces a block device (pre-boot).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutNetworkInterface attaches a TAP device (pre-boot).
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

// PutVsock adds the vsock device (pre-boot).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutLogger configures Firecracker's own log.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics configures the metrics file.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// Action runs a synchronous action (InstanceStart, SendCtrlAltDel,
// FlushMetrics).
func (c *Client) Action(ctx context.Context, action string) error {
	return c.do(ctx, http.MethodPut, "/actions", struct {
		ActionType string `json:"action_type"`
	}{action}, nil)
}

// Pause pauses a running microVM (PATCH /vm).
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPatch, "/vm", struct {
		State string `json:"state"`
	}{StatePaused}, nil)
}

// Resume resumes a paused microVM (PATCH /vm).
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPatch, "/vm", struct {
		State string `json:"state"`
	}{StateResumed}, nil)
}

// CreateSnapshot writes the paused microVM's state and memory. It is
// bounded by ctx only (see Client.long).
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.send(ctx, c.long, http.MethodPut, "/snapshot/create", s, nil)
}

// LoadSnapshot restores a snapshot into a fresh (not started) Firecracker.
// It is bounded by ctx only (see Client.long).
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	return c.send(ctx, c.long, http.MethodPut, "/snapshot/load", s, nil)
}

// VMConfig returns the microVM's device configuration (GET /vm/config).
func (c *Client) VMConfig(ctx context.Context) (VMConfig, error) {
	var cfg VMConfig
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg)
	return cfg, err
}

// Describe returns the instance information (GET /).
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// do sends one request. Firecracker answers 204 to a successful PUT or
// PATCH and 200 with a body to a GET; anything else carries an Error
// body whose fault_message the returned *APIError keeps.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	return c.send(ctx, c.hc, method, path, body, out)
}

func (c *Client) send(ctx context.Context, hc *http.Client, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxFaultBody))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read reply: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: ParseFault(data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode reply: %w", method, path, err)
		}
	}
	return nil
}

// IsAPIError reports whether err is an answer of the API (as opposed to
// a transport failure).
func IsAPIError(err error) bool {
	var e *APIError
	return errors.As(err, &e)
}
