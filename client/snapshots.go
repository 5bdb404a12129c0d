package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/bangerdev/banger/api"
)

// SnapshotVM starts an operation that saves a running VM's memory,
// device state and disks as a snapshot; the VM goes on running unless
// req.Stop. Follow it with WaitSnapshot.
func (c *Client) SnapshotVM(ctx context.Context, name string, req api.SnapshotVMRequest) (api.OperationRef, error) {
	var ref api.OperationRef
	return ref, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/snapshot", nil, req, &ref)
}

// ForkVM starts an operation that snapshots a running VM and restores
// req.Count children from it. Follow it with WaitFork.
func (c *Client) ForkVM(ctx context.Context, name string, req api.ForkVMRequest) (api.OperationRef, error) {
	var ref api.OperationRef
	return ref, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/fork", nil, req, &ref)
}

// ParkVM saves a running VM to disk and ends its VMM: it then costs no
// memory and no CPU, and any use (exec, attach, ssh, StartVM) wakes it.
func (c *Client) ParkVM(ctx context.Context, name string) (api.VM, error) {
	var vm api.VM
	return vm, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/park", nil, nil, &vm)
}

// ListSnapshots lists the snapshots, user and ready ones.
func (c *Client) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	var snaps []api.Snapshot
	return snaps, c.do(ctx, http.MethodGet, "/snapshots", nil, nil, &snaps)
}

// GetSnapshot returns one snapshot by name or id.
func (c *Client) GetSnapshot(ctx context.Context, name string) (api.Snapshot, error) {
	var sn api.Snapshot
	return sn, c.do(ctx, http.MethodGet, "/snapshots/"+url.PathEscape(name), nil, nil, &sn)
}

// DeleteSnapshot removes a snapshot and its files. While VMs or other
// snapshots stand on it the daemon refuses, naming them; force flattens
// those VMs first (their disks stop depending on it).
func (c *Client) DeleteSnapshot(ctx context.Context, name string, force bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "1")
	}
	return c.do(ctx, http.MethodDelete, "/snapshots/"+url.PathEscape(name), q, nil, nil)
}

// WaitSnapshot follows a snapshot operation (SnapshotVM) to its end and
// returns the snapshot it made.
func (c *Client) WaitSnapshot(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.Snapshot, error) {
	return waitFor(ctx, c, ref, onEvent, c.GetSnapshot)
}

// WaitFork follows a fork operation (ForkVM) to its end and returns the
// snapshot it took and the children it made.
func (c *Client) WaitFork(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.ForkResult, error) {
	var res api.ForkResult
	_, err := c.Wait(ctx, ref, onEvent, &res)
	return res, err
}
