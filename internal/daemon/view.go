package daemon

import (
	"context"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/store"
)

// vmView is the public view of a VM: the record plus what other tables
// and the live process say. Lists, lifecycle answers, operation results
// and bus events all use it; only `vm show` adds secrets to it
// (withOpencodePassword).
func (d *Daemon) vmView(ctx context.Context, vm store.VM) api.VM {
	out := api.VM{
		ID: vm.ID, Name: vm.Name, State: vm.State, CPUs: vm.CPUs, MemoryBytes: int64(vm.MemoryMiB) << 20,
		WorkDiskBytes: vm.WorkDiskBytes, Egress: vm.Egress, Accel: vm.Accel, VMM: vm.VMM,
		PID: vm.PID, SSHPort: vm.SSHPort, Dir: vm.Dir, CreatedAt: vm.CreatedAt, LastError: vm.LastError,
		Image: vm.ImageID, EgressPolicy: vm.EgressPolicy, EgressAllow: vm.EgressAllow, EgressDeny: vm.EgressDeny,
		Credentials: vm.Credentials,
	}
	manifest := ""
	if img, err := d.store.GetImage(ctx, vm.ImageID); err == nil {
		out.Image = img.Name
		manifest = img.Manifest
		if vm.WorkSeedFingerprint != "" {
			if fp, err := imageSeedFingerprint(img); err == nil && fp != vm.WorkSeedFingerprint {
				out.ImageWorkSeedFingerprint = fp
			}
		}
	}
	out.Net = vm.NetMode
	if vm.SnapshotID != "" {
		if s, err := d.store.GetSnapshot(ctx, vm.SnapshotID); err == nil {
			out.Snapshot = s.Name
		}
	}
	if isTap(vm) {
		if l, err := d.store.LeaseForVM(ctx, vm.ID); err == nil {
			out.Address = l.Addr.Addr().String()
		}
	}
	out.Workspace = workspaceOf(vm)
	out.WorkSeedFingerprint = vm.WorkSeedFingerprint
	out.AuthSynced = decodeNames(vm.AuthSyncedJSON)
	if vm.Credentials == config.CredentialsBroker {
		out.BrokeredCredentials = brokeredCredentials(vm.Dir)
	}
	if ports, err := d.store.PortsForVM(ctx, vm.ID); err == nil {
		for _, p := range ports {
			out.Ports = append(out.Ports, api.Port{HostPort: p.Port, GuestPort: p.GuestPort})
		}
	}
	out.Opencode = opencodeView(out, manifest)
	d.addLiveStats(&out, vm)
	return out
}
