package api

import "time"

// VMParked is the state of a VM whose memory and devices are saved in
// its directory and whose VMM is gone: it costs disk, no memory and no
// CPU, and any use (exec, session attach, ssh, workspace, `vm start`)
// wakes it first.
const VMParked = "parked"

// Snapshot kinds.
const (
	// SnapshotUser is one a user took (`vm snapshot`) or a fork made.
	SnapshotUser = "user"
	// SnapshotReady is an image's ready snapshot: the image booted, its
	// agent up and its services answering. `vm create` restores from it.
	SnapshotReady = "ready"
)

// Snapshot is the public view of a VM snapshot: the memory, device
// state and disks of a VM at one instant. Its disks are read-only
// layers that VMs created from it stack their own copy-on-write layers
// on.
type Snapshot struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Kind string `json:"kind"`
	// VM names the VM it was taken from (empty for a ready snapshot
	// whose throwaway VM is gone).
	VM    string `json:"vm,omitempty"`
	Image string `json:"image"`
	// Parent names the snapshot the source VM's disks stood on.
	Parent      string    `json:"parent,omitempty"`
	VMM         string    `json:"vmm"`
	CPUs        int       `json:"cpus"`
	MemoryBytes int64     `json:"memory_bytes"`
	WorkDisk    int64     `json:"work_disk_bytes"`
	SizeBytes   int64     `json:"size_bytes"`
	CreatedAt   time.Time `json:"created_at"`
	// UsedBy names the VMs and snapshots that stand on this one.
	UsedBy []string `json:"used_by,omitempty"`
	// Compat is what restoring it requires (VMM version, CPU model).
	Compat string `json:"compat,omitempty"`
}

// SnapshotVMRequest is the body of POST /v1/vms/{name}/snapshot.
type SnapshotVMRequest struct {
	// Name is the snapshot's name (default: VM name and a timestamp).
	Name string `json:"name,omitempty"`
	// Stop leaves the VM stopped after the save instead of running on.
	Stop bool `json:"stop,omitempty"`
}

// ForkVMRequest is the body of POST /v1/vms/{name}/fork.
type ForkVMRequest struct {
	// Count is how many children (default 1).
	Count int `json:"count,omitempty"`
	// Prefix names the children PREFIX-1..N (default: the VM's name).
	Prefix string `json:"prefix,omitempty"`
}

// ForkResult is a fork operation's result.
type ForkResult struct {
	Snapshot string `json:"snapshot"`
	VMs      []VM   `json:"vms"`
}

// DeleteSnapshotRequest is the query of DELETE /v1/snapshots/{name}.
// Force flattens the stopped VMs that stand on the snapshot first.
type DeleteSnapshotRequest struct {
	Force bool `json:"force,omitempty"`
}
