// Package api holds the wire types shared by the banger daemon, its Go
// client (and so the CLI), and the guest agent. JSON keys are snake_case,
// times RFC 3339, sizes are bytes in *_bytes fields.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Version is the prefix of every daemon route.
const Version = "v1"

// MaxBodyBytes caps every JSON request body the daemon reads.
const MaxBodyBytes = 1 << 20

// VM states.
const (
	VMCreating = "creating"
	VMRunning  = "running"
	VMStopping = "stopping"
	VMStopped  = "stopped"
	VMError    = "error"
)

// Operation and stage states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
)

// NamePattern is what VM (and image) names must match: they end up in
// host names, process names and paths.
var NamePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)

// ValidateName explains what is wrong with a name.
func ValidateName(kind, name string) error {
	if !NamePattern.MatchString(name) {
		return &Error{
			Message: fmt.Sprintf("invalid %s name %q", kind, name),
			Hint:    "use 1-31 characters: a lowercase letter first, then lowercase letters, digits or '-'",
			Code:    CodeInvalid,
		}
	}
	return nil
}

// Error codes map to HTTP statuses and CLI exit codes.
const (
	CodeInvalid     = "invalid"
	CodeNotFound    = "not_found"
	CodeConflict    = "conflict"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)

// Error is every failed daemon answer: `{"error":{"message":..,"hint":..}}`.
type Error struct {
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
	Code    string `json:"code,omitempty"`
	// OperationID links a failed operation, when there is one.
	OperationID string `json:"operation_id,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// ErrorBody is the envelope of Error on the wire.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Errorf builds an *Error with a hint.
func Errorf(code, hint, format string, args ...any) *Error {
	return &Error{Code: code, Hint: hint, Message: fmt.Sprintf(format, args...)}
}

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	PID       int    `json:"pid"`
	Home      string `json:"home"`
	Accel     string `json:"accel"`
	AccelNote string `json:"accel_note,omitempty"`
}

// VM is the public view of a VM.
type VM struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	State         string `json:"state"`
	Image         string `json:"image"`
	CPUs          int    `json:"cpus"`
	MemoryBytes   int64  `json:"memory_bytes"`
	WorkDiskBytes int64  `json:"work_disk_bytes"`
	// Egress is the mode: "all", "none" or "allow" (through the egress
	// gateway, judged by EgressPolicy plus the VM's own EgressAllow and
	// EgressDeny patterns).
	Egress       string   `json:"egress"`
	EgressPolicy string   `json:"egress_policy,omitempty"`
	EgressAllow  []string `json:"egress_allow,omitempty"`
	EgressDeny   []string `json:"egress_deny,omitempty"`
	// Credentials is how the host's agent credentials reach the VM:
	// "broker", "copy" or "none". BrokeredCredentials names what the
	// broker holds for it (files and variables; never values).
	Credentials         string   `json:"credentials,omitempty"`
	BrokeredCredentials []string `json:"brokered_credentials,omitempty"`
	Accel               string   `json:"accel"`
	VMM                 string   `json:"vmm"`
	PID                 int      `json:"pid,omitempty"`
	SSHPort             int      `json:"ssh_port,omitempty"`
	// Net is "user" or "tap"; Address is the guest's own IP in tap mode,
	// where ssh and services are reached directly (no forwards).
	Net           string    `json:"net,omitempty"`
	Address       string    `json:"address,omitempty"`
	SSHHostKeyPin string    `json:"-"`
	Dir           string    `json:"dir"`
	CreatedAt     time.Time `json:"created_at"`
	LastError     string    `json:"last_error,omitempty"`
	Ports         []Port    `json:"ports,omitempty"`
	AgentVersion  string    `json:"agent_version,omitempty"`
	// Workspace is the repository last prepared into the VM.
	Workspace *Workspace `json:"workspace,omitempty"`
	// WorkSeedFingerprint identifies the image work seed /root was made
	// from; ImageWorkSeedFingerprint is set when the image's seed has
	// changed since (a new VM would get a different /root skeleton).
	WorkSeedFingerprint      string `json:"work_seed_fingerprint,omitempty"`
	ImageWorkSeedFingerprint string `json:"image_work_seed_fingerprint,omitempty"`
	// AuthSynced names the auth files copied into the VM at its last boot
	// (paths relative to /root; never contents).
	AuthSynced []string `json:"auth_synced,omitempty"`
	// Live figures of the VMM process, read from /proc when the VM is
	// read (absent when it is not running). CPUPercent is host CPU over
	// the time since the daemon's previous sample of the same process
	// (100 = one core busy); the first sample averages since the start.
	StartedAt  *time.Time `json:"started_at,omitempty"`
	CPUPercent float64    `json:"cpu_percent,omitempty"`
	RSSBytes   int64      `json:"rss_bytes,omitempty"`
	// LiveSessions counts the sessions the daemon believes are running.
	LiveSessions int `json:"live_sessions,omitempty"`
	// Opencode is how to reach the opencode server of an image that
	// serves one (absent otherwise).
	Opencode *Opencode `json:"opencode,omitempty"`
	// Snapshot names the snapshot whose layers the VM's disks stand on;
	// RestoredFrom says how the VM last started: "" (booted), or the
	// snapshot it was restored from.
	Snapshot string `json:"snapshot,omitempty"`
}

// OpencodeUsername is the basic-auth user of `opencode serve` (opencode's
// default, OPENCODE_SERVER_USERNAME unset).
const OpencodeUsername = "opencode"

// Opencode is the address and credentials of a VM's opencode server. The
// server asks for HTTP basic auth with the VM's own random password
// (OPENCODE_SERVER_PASSWORD); `opencode attach --password` or that
// environment variable gives it to the client.
type Opencode struct {
	URL      string `json:"url"`
	Username string `json:"username"`
	// Password is sent only by GET /v1/vms/{name} (`banger vm show`):
	// VM lists, lifecycle replies and operation results, which are
	// stored, leave it out.
	Password string `json:"password,omitempty"`
}

// Port is a guest port forwarded to 127.0.0.1 on the host.
type Port struct {
	HostPort  int `json:"host_port"`
	GuestPort int `json:"guest_port"`
}

// CreateVMRequest is the body of POST /v1/vms.
type CreateVMRequest struct {
	Name      string `json:"name,omitempty"`
	Image     string `json:"image,omitempty"`
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskGiB   int    `json:"disk_gib,omitempty"`
	// Egress is "all", "none", "allow" (the gateway with the config's
	// default policy) or the name of a policy (the gateway with that
	// policy); empty takes the config's vm.egress.
	Egress string `json:"egress,omitempty"`
	// EgressPolicy names the policy of egress allow (default: the
	// config's egress.default_policy); Egress may name it instead.
	EgressPolicy string `json:"egress_policy,omitempty"`
	// Allow adds patterns to the VM's policy (host, *.suffix or CIDR,
	// each with an optional :port); it implies egress allow.
	Allow []string `json:"allow,omitempty"`
	// Credentials is "broker", "copy" or "none" (default: the config's
	// credentials.mode).
	Credentials string `json:"credentials,omitempty"`
	// VMM is "qemu" or "firecracker"; empty takes the config's choice.
	VMM string `json:"vmm,omitempty"`
	// Jailer runs Firecracker under its jailer.
	Jailer bool `json:"jailer,omitempty"`
	// Net is the NIC's network mode: "user" or "tap" (default: the
	// config's vm.net).
	Net string `json:"net,omitempty"`
	// NoWaitServices skips waiting for the image's services (opencode on
	// guest port 4096) after the agent answers.
	NoWaitServices bool `json:"no_wait_services,omitempty"`
	// Snapshot restores the VM from this snapshot (its image, CPUs,
	// memory and work disk) instead of booting it.
	Snapshot string `json:"snapshot,omitempty"`
	// Cold boots the image even when it has a usable ready snapshot.
	Cold bool `json:"cold,omitempty"`
}

// StartVMRequest is the body of POST /v1/vms/{name}/start.
type StartVMRequest struct {
	// DiskGiB grows the work disk before the boot when larger than its
	// size; smaller is refused, zero keeps it.
	DiskGiB int `json:"disk_gib,omitempty"`
}

// StopVMRequest is the body of POST /v1/vms/{name}/stop.
type StopVMRequest struct {
	Force bool `json:"force,omitempty"`
}

// SSHInfo is what the CLI needs to hand the terminal to OpenSSH.
type SSHInfo struct {
	Host           string `json:"host"`
	Port           int    `json:"port"`
	User           string `json:"user"`
	IdentityFile   string `json:"identity_file"`
	KnownHostsFile string `json:"known_hosts_file"`
	HostKeyAlias   string `json:"host_key_alias"`
}

// Health answers GET /v1/vms/{name}/health.
type Health struct {
	VM       string       `json:"vm"`
	State    string       `json:"state"`
	VMM      string       `json:"vmm"`
	VMMAlive bool         `json:"vmm_alive"`
	Agent    *AgentHealth `json:"agent,omitempty"`
	AgentErr string       `json:"agent_error,omitempty"`
}

// Image is the public view of an image.
type Image struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Default       bool              `json:"default"`
	State         string            `json:"state"`
	Fingerprint   string            `json:"fingerprint"`
	Suite         string            `json:"suite"`
	KernelVersion string            `json:"kernel_version"`
	SizeBytes     int64             `json:"size_bytes"`
	Dir           string            `json:"dir"`
	CreatedAt     time.Time         `json:"created_at"`
	Packages      map[string]string `json:"packages,omitempty"`
	// NPM lists the npm packages (Node.js, coding agents) in /usr/local
	// with their versions; Services the services the image starts.
	NPM      map[string]string `json:"npm,omitempty"`
	Services []string          `json:"services,omitempty"`
	UsedBy   []string          `json:"used_by,omitempty"`
	// ReadySnapshot names the image's ready snapshot, which `vm create`
	// restores from (empty: its VMs boot cold).
	ReadySnapshot string `json:"ready_snapshot,omitempty"`
	// Distro is "debian" or "void"; From names the image a derived
	// image was provisioned from.
	Distro string `json:"distro,omitempty"`
	From   string `json:"from,omitempty"`
	// VerifiedAt is when `image verify` last ran; VerifyError is set when
	// it failed (a staged image cannot be promoted until it passes).
	VerifiedAt  *time.Time `json:"verified_at,omitempty"`
	VerifyError string     `json:"verify_error,omitempty"`
}

// Image states.
const (
	ImageStaged  = "staged"
	ImageManaged = "managed"
)

// RegisterImageRequest is the body of POST /v1/images/register: an image
// made elsewhere, from host paths.
type RegisterImageRequest struct {
	Name   string `json:"name"`
	Rootfs string `json:"rootfs"`
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// Modules is a /lib/modules/<version> directory matching Kernel; it
	// is copied into the rootfs when the rootfs lacks it.
	Modules string `json:"modules,omitempty"`
}

// BuildImageRequest is the body of POST /v1/images/build.
type BuildImageRequest struct {
	Name  string `json:"name,omitempty"`
	Force bool   `json:"force,omitempty"`
	// Base builds the minimal image (no Node.js, coding agents or dev
	// baseline), for tests and benchmarks; the default is the agent image.
	Base bool `json:"base,omitempty"`
	// From and Provision derive an image: boot From, run the Provision
	// script (its text) over SSH, keep the result. Egress is the
	// provisioning VM's ("" is the config's vm.egress).
	From      string `json:"from,omitempty"`
	Provision string `json:"provision,omitempty"`
	Egress    string `json:"egress,omitempty"`
	// Distro "void" assembles an image from staged parts (host paths):
	// a rootfs tarball and a kernel, initramfs and modules directory.
	Distro    string `json:"distro,omitempty"`
	RootfsTar string `json:"rootfs_tar,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	Initrd    string `json:"initrd,omitempty"`
	Modules   string `json:"modules,omitempty"`
}

// PathRequest carries a host path (image export and import).
type PathRequest struct {
	Path string `json:"path"`
}

// OperationRef is the immediate answer to a request that starts long work.
type OperationRef struct {
	ID string `json:"operation_id"`
}

// Operation is long work with persisted, streamed stages.
type Operation struct {
	ID          string `json:"id"`
	Kind        string `json:"kind"`
	Target      string `json:"target"`
	State       string `json:"state"`
	Error       string `json:"error,omitempty"`
	Hint        string `json:"hint,omitempty"`
	ConsoleTail string `json:"console_tail,omitempty"`
	// Result is what a succeeded operation made, as JSON: a VM for
	// vm.create, an Image for image builds and verifies, a Workspace for
	// workspace prepare. DecodeResult (or the client's Wait helpers) read it.
	Result     json.RawMessage `json:"result,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
	Stages     []Stage         `json:"stages"`
}

// DecodeResult unmarshals the operation's result into v. An operation
// without a result (still running, failed, or of a kind that makes
// nothing) is an error.
func (op Operation) DecodeResult(v any) error {
	if len(op.Result) == 0 || string(op.Result) == "null" {
		return fmt.Errorf("operation %s (%s): %w", op.ID, op.State, ErrNoResult)
	}
	if err := json.Unmarshal(op.Result, v); err != nil {
		return fmt.Errorf("decode result of operation %s: %w", op.ID, err)
	}
	return nil
}

// ErrNoResult: an operation's record holds no result, because it has not
// succeeded or because the daemon could not store it (read the object by
// the operation's Target instead).
var ErrNoResult = errors.New("operation has no result")

// Stage is one named step of an operation.
type Stage struct {
	Seq        int        `json:"seq"`
	Name       string     `json:"name"`
	State      string     `json:"state"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Error      string     `json:"error,omitempty"`
}

// Event is one line of GET /v1/operations/{id}/events (NDJSON): a stage
// changed, or the operation finished (Operation set, Done true).
type Event struct {
	Stage     *Stage     `json:"stage,omitempty"`
	Done      bool       `json:"done,omitempty"`
	Operation *Operation `json:"operation,omitempty"`
	// Output is a chunk of whole lines printed by a running stage (a
	// provisioning script, for one); it is live only, not persisted.
	Output *StageOutput `json:"output,omitempty"`
}

// StageOutput is output of stage Seq: one or more complete lines.
type StageOutput struct {
	Seq  int    `json:"seq"`
	Text string `json:"text"`
}

// Check is one line of `banger doctor`: ok, warn or fail, with a fix.
type Check struct {
	Name     string `json:"name"`
	Status   string `json:"status"`
	Detail   string `json:"detail"`
	Fix      string `json:"fix,omitempty"`
	Required bool   `json:"required"`
}
