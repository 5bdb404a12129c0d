package vmmfake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

var _ vmm.Snapshotter = (*Driver)(nil)

// fakeState is the file the fake's Save writes; its first line is the
// magic CheckSnapshot wants.
const (
	fakeState = "fake-state"
	fakeMagic = "fake-vmm-state v1\n"
)

// SnapshotCompat implements vmm.Snapshotter; Compat overrides it (a
// host whose VMM changed since the save).
func (f *Driver) SnapshotCompat(_ context.Context, accel string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Compat != "" {
		return f.Compat, nil
	}
	return "fake 1; accel " + accel, nil
}

// Save implements vmm.Snapshotter: it writes the state file and ends
// the VMM, or fails with SaveErr (the VMM ends too, as a real one's
// guest state is unknown after a failed save).
func (f *Driver) Save(_ context.Context, dir string, p vmm.Process, dst string) (vmm.Saved, error) {
	f.mu.Lock()
	fp := f.procs[p.PID]
	saveErr := f.SaveErr
	f.mu.Unlock()
	if fp == nil || !f.Alive(p) {
		return vmm.Saved{}, errors.New("save: the VMM is not running")
	}
	f.record("save %s", fp.id)
	defer f.exit(fp)
	if saveErr != nil {
		_ = os.WriteFile(filepath.Join(dst, fakeState), []byte("partial"), 0o600)
		return vmm.Saved{}, saveErr
	}
	data := fakeMagic + "vm " + fp.id + "\n"
	if err := os.WriteFile(filepath.Join(dst, fakeState), []byte(data), 0o600); err != nil {
		return vmm.Saved{}, err
	}
	return vmm.Saved{Bytes: int64(len(data)), MemoryBytes: int64(len(data))}, nil
}

// OverlayDisk implements vmm.Snapshotter like a raw-disk VMM: a copy.
func (f *Driver) OverlayDisk(ctx context.Context, _ system.Runner, layer vmm.Disk, path string) (vmm.Disk, error) {
	if err := system.CloneFile(ctx, layer.Path, path); err != nil {
		return vmm.Disk{}, fmt.Errorf("copy layer: %w", err)
	}
	return vmm.Disk{Path: path, Format: layer.Format}, nil
}

// CheckSnapshot implements vmm.Snapshotter.
func (f *Driver) CheckSnapshot(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, fakeState))
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if !strings.HasPrefix(string(b), fakeMagic) {
		return errors.New("state file is truncated or not the fake VMM's")
	}
	return nil
}

// restoreCheck is what Start does first with spec.Restore.
func (f *Driver) restoreCheck(spec vmm.Spec) error {
	if spec.Restore == nil {
		return nil
	}
	f.record("restore %s share=%v", spec.ID, spec.Restore.Share)
	return f.CheckSnapshot(spec.Restore.Dir)
}

// guestIdentity answers POST /v1/identity, recording the new hostname.
func (f *Driver) guestIdentity(p *proc, w http.ResponseWriter, r *http.Request) {
	var req agentapi.IdentityRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, agentapi.MaxIdentityBody)).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.record("identity %s hostname=%s keys=%d", p.id, req.Hostname, len(req.SSHHostKeys))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(agentapi.IdentityReply{Done: []string{"clock", "entropy"}})
}
