package daemon

// The snapshot engine: `vm snapshot`, `vm fork`, `vm park` and the
// restores behind `vm create --snapshot`, ready images and waking a
// parked VM. (Being built: the methods below are the contract the HTTP
// layer and CLI are written against.)

import (
	"context"
	"errors"

	"github.com/bangerdev/banger/api"
)

var errSnapshotsUnbuilt = errors.New("snapshots: not built yet")

// snapshotAPI is the snapshot engine as the HTTP layer sees it.
type snapshotAPI struct{ d *Daemon }

// SnapshotVM saves a running VM as a snapshot (an operation).
func (s snapshotAPI) SnapshotVM(ctx context.Context, vm string, req api.SnapshotVMRequest) (string, error) {
	return "", errSnapshotsUnbuilt
}

// ForkVM snapshots a running VM and restores N children from it (an
// operation whose result is an api.ForkResult).
func (s snapshotAPI) ForkVM(ctx context.Context, vm string, req api.ForkVMRequest) (string, error) {
	return "", errSnapshotsUnbuilt
}

// ParkVM saves a running VM into its own directory and ends its VMM.
func (s snapshotAPI) ParkVM(ctx context.Context, vm string) (api.VM, error) {
	return api.VM{}, errSnapshotsUnbuilt
}

// ListSnapshots lists every ready snapshot.
func (s snapshotAPI) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	return nil, errSnapshotsUnbuilt
}

// GetSnapshot is one snapshot's view.
func (s snapshotAPI) GetSnapshot(ctx context.Context, name string) (api.Snapshot, error) {
	return api.Snapshot{}, errSnapshotsUnbuilt
}

// DeleteSnapshot removes a snapshot nothing stands on; force flattens
// the stopped VMs that do first.
func (s snapshotAPI) DeleteSnapshot(ctx context.Context, name string, force bool) error {
	return errSnapshotsUnbuilt
}
