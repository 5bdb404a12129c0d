package store

import "time"

// Image states. The first image built becomes the default and is
// managed; later builds stay staged until promoted, so a bad build never
// becomes what new VMs boot by accident. Being the default is a flag of
// one managed image.
const (
	ImageStateManaged = "managed"
	ImageStateStaged  = "staged"
)

// VM states.
const (
	VMStateCreating = "creating"
	VMStateRunning  = "running"
	VMStateStopping = "stopping"
	VMStateStopped  = "stopped"
	VMStateError    = "error"
)

// Operation states. An operation is running until FinishOperation, or until
// a restarted daemon finds it dangling (FailDanglingOperations).
const (
	OpStateRunning   = "running"
	OpStateSucceeded = "succeeded"
	OpStateFailed    = "failed"
)

// Stage states.
const (
	StageStateRunning   = "running"
	StageStateSucceeded = "succeeded"
	StageStateFailed    = "failed"
	StageStateSkipped   = "skipped"
)

// Operation kinds the daemon starts. Kind is free text in the database, so
// a new kind needs no migration; these exist so producers and the CLI agree
// on spelling.
const (
	OpKindVMCreate         = "vm.create"
	OpKindVMStart          = "vm.start"
	OpKindVMStop           = "vm.stop"
	OpKindVMDelete         = "vm.delete"
	OpKindImageBuild       = "image.build"
	OpKindWorkspacePrepare = "workspace.prepare"
)

// ProtoTCP is the protocol AllocatePort records; QEMU user-mode forwards
// are TCP unless asked otherwise.
const ProtoTCP = "tcp"

// DanglingOpError is the error FailDanglingOperations records on
// operations and stages a previous daemon left running.
const DanglingOpError = "daemon restarted during operation"

// Image is a registered VM image: a directory holding a rootfs, kernel,
// initrd and manifest.
type Image struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Fingerprint hashes the build inputs, so an unchanged build is
	// skipped and an outdated image is noticed.
	Fingerprint   string    `json:"fingerprint"`
	Dir           string    `json:"dir"`
	Default       bool      `json:"default"`
	State         string    `json:"state"`
	Suite         string    `json:"suite"`
	KernelVersion string    `json:"kernel_version"`
	SizeBytes     int64     `json:"size_bytes"`
	CreatedAt     time.Time `json:"created_at"`
	// Manifest is the image's manifest as JSON text; the store does not
	// look inside it.
	Manifest string `json:"manifest"`
	// VerifiedAt is when `image verify` last ran (zero: never);
	// VerifyError is its failure, "" when it passed.
	VerifiedAt  time.Time `json:"verified_at"`
	VerifyError string    `json:"verify_error"`
	// ReadySnapshotID is the image's ready snapshot ("" when it has
	// none yet).
	ReadySnapshotID string `json:"ready_snapshot_id"`
}

// VM is one microVM and what the daemon needs to re-adopt it after a
// restart.
type VM struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	ImageID       string `json:"image_id"`
	State         string `json:"state"`
	CPUs          int    `json:"cpus"`
	MemoryMiB     int    `json:"memory_mib"`
	WorkDiskBytes int64  `json:"work_disk_bytes"`
	Egress        string `json:"egress"`
	Accel         string `json:"accel"`
	// PID and PIDStartTime identify the VMM process; the start time (from
	// /proc/PID/stat) tells a live VMM from an unrelated process that
	// reused the PID.
	PID          int       `json:"pid"`
	PIDStartTime uint64    `json:"pid_start_time"`
	Dir          string    `json:"dir"`
	SSHPort      int       `json:"ssh_port"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	LastError    string    `json:"last_error"`
	// WorkspaceJSON describes the workspace last prepared in the VM
	// (api.Workspace as JSON); only SetVMWorkspace writes it.
	WorkspaceJSON string `json:"workspace_json"`
	// WorkSeedFingerprint identifies the image work seed the work disk
	// was made from ("" for VMs made before it was recorded).
	WorkSeedFingerprint string `json:"work_seed_fingerprint"`
	// AuthSyncedJSON lists, as a JSON array, the auth files copied into
	// the VM at its last boot (paths relative to /root).
	AuthSyncedJSON string `json:"auth_synced_json"`
	// VMM names the driver that runs the VM ("qemu", "firecracker");
	// NetMode is "user" or "tap".
	VMM     string `json:"vmm"`
	NetMode string `json:"net_mode"`
	// VMMStateJSON is the driver's own per-VM state (API socket, vsock
	// path and CID, ...), opaque to everything but the driver.
	VMMStateJSON string `json:"vmm_state_json"`
	// EgressPolicy names the policy of egress mode allow; EgressAllow
	// and EgressDeny are the VM's own patterns on top. Only CreateVM and
	// SetVMEgress write them, so a lifecycle UpdateVM cannot undo a live
	// policy change.
	EgressPolicy string   `json:"egress_policy"`
	EgressAllow  []string `json:"egress_allow"`
	EgressDeny   []string `json:"egress_deny"`
	// Credentials is "broker", "copy" or "none" (set at create).
	Credentials string `json:"credentials"`
	// SnapshotID is the snapshot whose read-only layers the VM's root
	// and work disks stand on ("" for disks made from the image).
	SnapshotID string `json:"snapshot_id"`
}

// Snapshot states. A snapshot is saving while its files are written
// (reconcile deletes it), layering while the source VM's disks move
// into it (reconcile finishes that), ready after.
const (
	SnapshotSaving   = "saving"
	SnapshotLayering = "layering"
	SnapshotReady    = "ready"
)

// Snapshot is a VM's memory, device state and disks at one instant:
// files in Dir, the disks as read-only layers others stack on.
type Snapshot struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Kind  string `json:"kind"` // api.SnapshotUser or api.SnapshotReady
	State string `json:"state"`
	// VMID and VMName are the source VM's (the VM may be gone since).
	VMID    string `json:"vm_id"`
	VMName  string `json:"vm_name"`
	ImageID string `json:"image_id"`
	// ParentID is the snapshot the source VM's disks stood on.
	ParentID string `json:"parent_id"`
	VMM      string `json:"vmm"`
	// Compat is the driver's SnapshotCompat at the save.
	Compat        string    `json:"compat"`
	Accel         string    `json:"accel"`
	CPUs          int       `json:"cpus"`
	MemoryMiB     int       `json:"memory_mib"`
	WorkDiskBytes int64     `json:"work_disk_bytes"`
	NetMode       string    `json:"net_mode"`
	Dir           string    `json:"dir"`
	SizeBytes     int64     `json:"size_bytes"`
	CreatedAt     time.Time `json:"created_at"`
	// RootFormat and WorkFormat are the layers' formats ("raw" or
	// "qcow2"): a layer is the source VM's disk as it was.
	RootFormat string `json:"root_format"`
	WorkFormat string `json:"work_format"`
}

// Port is a host port forwarded to a VM. It stays reserved for the VM's
// whole life, so a VM restarted (or re-adopted) keeps its forwards.
type Port struct {
	Port      int    `json:"port"`
	VMID      string `json:"vm_id"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"`
}

// Operation is a long-running request (vm create, image build, ...) whose
// progress outlives the client that started it.
type Operation struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Target string `json:"target"`
	State  string `json:"state"`
	Error  string `json:"error"`
	Hint   string `json:"hint"`
	// ConsoleTail is the end of the VM console log when a boot failed,
	// kept so the failure can be diagnosed after the VM is gone.
	ConsoleTail string     `json:"console_tail"`
	ResultJSON  string     `json:"result_json"`
	CreatedAt   time.Time  `json:"created_at"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	Stages      []Stage    `json:"stages"`
}

// Stage is one named step of an operation; Seq orders the stages of one
// operation starting at 1.
type Stage struct {
	OpID       string     `json:"op_id"`
	Seq        int        `json:"seq"`
	Name       string     `json:"name"`
	State      string     `json:"state"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Error      string     `json:"error"`
	Detail     string     `json:"detail"`
}
