package daemon

// Ready images and what a restored guest already is. An image's ready
// snapshot is the image booted once, its agent up and its services
// answering, saved: `vm create` restores from it instead of booting, so
// a new VM costs a restore. It is made after a build that makes the
// image the default and after a promote; a create that cannot use it
// (other sizes, egress, VMM version) boots cold and its "cold" stage
// says why.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/store"
)

// snapFileGuest records what the snapshot's guest was set up with at
// boot (from its seed disk) and cannot change live: the egress
// redirect, and how credentials reached it. A VM restored from it must
// want the same.
const snapFileGuest = "guest.json"

type snapGuest struct {
	Gateway     bool   `json:"gateway"`
	Credentials string `json:"credentials"`
}

func writeSnapGuest(dir string, vm store.VM) error {
	b, err := json.Marshal(snapGuest{Gateway: usesGateway(vm), Credentials: vm.Credentials})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, snapFileGuest), b, 0o600)
}

func readSnapGuest(dir string) (snapGuest, error) {
	var g snapGuest
	b, err := os.ReadFile(filepath.Join(dir, snapFileGuest))
	if err != nil {
		return g, err
	}
	if len(b) > 4096 {
		return g, errors.New("guest.json is too large")
	}
	return g, json.Unmarshal(b, &g)
}

// guestFits says why a create (req, after validateCreate) cannot
// continue snap's guest, or "".
func guestFits(snap store.Snapshot, req api.CreateVMRequest) string {
	g, err := readSnapGuest(snap.Dir)
	if err != nil {
		return fmt.Sprintf("snapshot %q does not say how its guest was set up: %v", snap.Name, err)
	}
	if want := req.Egress == config.EgressAllow; want != g.Gateway {
		if g.Gateway {
			return fmt.Sprintf("snapshot %q was taken with the egress gateway; pass --egress allow (or a policy)", snap.Name)
		}
		return fmt.Sprintf("snapshot %q was taken without the egress gateway; pass --egress all or none", snap.Name)
	}
	if req.Credentials != g.Credentials {
		return fmt.Sprintf("snapshot %q was taken with credentials %s; pass --credentials %s", snap.Name, g.Credentials, g.Credentials)
	}
	return ""
}

// readySnapshotFor picks the image's ready snapshot for req, filling req
// from it, or says why the create boots cold ("" reason and nil: the
// image has none). stale says the snapshot can serve no create any more
// (another VMM version, broken files): it is rebuilt after this create.
func (d *Daemon) readySnapshotFor(ctx context.Context, req *api.CreateVMRequest) (snap *store.Snapshot, why string, stale bool) {
	img, err := d.resolveImage(ctx, req.Image)
	if err != nil || img.ReadySnapshotID == "" {
		return nil, "", false
	}
	s, err := d.store.GetSnapshot(ctx, img.ReadySnapshotID)
	if err != nil || s.State != store.SnapshotReady {
		return nil, "the image's ready snapshot is gone", true
	}
	try := *req
	try.Snapshot = s.Name
	d.defaultSizes(&try)
	if try.Jailer {
		return nil, "--jailer VMs boot cold", false
	}
	got, err := d.snapshotForCreate(ctx, &try)
	if err != nil {
		var ae *api.Error
		msg := err.Error()
		if errors.As(err, &ae) {
			msg = ae.Message
		}
		// Other sizes or flags suit another create; a snapshot of
		// another VMM version or with broken files suits none.
		stale = strings.Contains(msg, "saved by") || strings.Contains(msg, "unusable")
		return nil, "ready snapshot not used: " + msg, stale
	}
	*req = try
	return &got, "", false
}

// rebuildReady makes img's ready snapshot again in the background, when
// no image job runs.
func (d *Daemon) rebuildReady(img store.Image) {
	e := d.imageEngine()
	if !e.builds.acquire() {
		return
	}
	if _, err := d.ops.start(d.ops.base, "image.ready", img.Name, func(ctx context.Context, stage stageFunc) (any, error) {
		defer e.builds.release()
		return nil, d.makeReadySnapshot(ctx, stage, img)
	}); err != nil {
		e.builds.release()
	}
}

// makeReadySnapshot boots img in a VM of the configured defaults, waits
// for its services and saves it as the image's ready snapshot,
// replacing an older one that nothing stands on.
func (d *Daemon) makeReadySnapshot(ctx context.Context, stage stageFunc, img store.Image) error {
	name := "ready-" + newID(3)
	req := api.CreateVMRequest{Name: name, Image: img.Name, Cold: true}
	vimg, err := d.validateCreate(ctx, &req)
	if err != nil {
		return err
	}
	if req.Net != "" && req.Net != "user" {
		return errors.New("ready snapshots need [vm] net = \"user\"")
	}
	d.mu.Lock()
	d.creating[name] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.creating, name)
		d.mu.Unlock()
	}()
	sub := func(n string, fn func(ctx context.Context) error) error { return stage("ready: "+n, fn) }
	defer func() {
		// The throwaway VM goes whatever happened; its disks are the
		// snapshot's layers by then.
		if _, err := d.store.GetVM(context.WithoutCancel(ctx), name); err == nil {
			if err := d.DeleteVM(context.WithoutCancel(ctx), name, true); err != nil {
				d.log.Warn("remove ready-snapshot VM", "vm", name, "err", err)
			}
		}
	}()
	if _, err := d.createVM(ctx, req, vimg, nil, sub); err != nil {
		return err
	}
	unlock := d.lockVM(name)
	snap, err := d.takeSnapshot(ctx, sub, name, readySnapshotName(img), api.SnapshotReady, false)
	unlock()
	if err != nil {
		return err
	}
	old := img.ReadySnapshotID
	if err := d.store.SetImageReadySnapshot(ctx, img.ID, snap.ID); err != nil {
		return err
	}
	// The throwaway VM's row must go before the snapshot counts as
	// unused; the deferred delete does that, so the old one is
	// replaced here only when nothing stands on it.
	if old != "" && old != snap.ID {
		if o, err := d.store.GetSnapshot(ctx, old); err == nil {
			if vms, snaps, err := d.store.SnapshotsStandingOn(ctx, o.ID); err == nil && len(vms) == 0 && len(snaps) == 0 {
				os.RemoveAll(o.Dir)
				_ = d.store.DeleteSnapshot(ctx, o.ID)
			}
		}
	}
	return nil
}

// readySnapshotName is "<image>-ready" with a suffix when taken.
func readySnapshotName(img store.Image) string {
	base := img.Name
	if len(base) > 18 {
		base = base[:18]
	}
	return base + "-ready-" + newID(2)
}

// dropSnapshotsOf removes an image's ready snapshot, before the image
// goes (a snapshot's root layer stands on the image's rootfs). One that
// VMs stand on stays, and the image delete is refused.
func (d *Daemon) dropSnapshotsOf(ctx context.Context, img store.Image) error {
	if img.ReadySnapshotID == "" {
		return nil
	}
	s, err := d.store.GetSnapshot(ctx, img.ReadySnapshotID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := d.store.DeleteSnapshot(ctx, s.ID); err != nil {
		if errors.Is(err, store.ErrInUse) {
			return api.Errorf(api.CodeConflict, "delete the VMs made from it first", "image %q: its ready snapshot is in use: %v", img.Name, err)
		}
		return err
	}
	return os.RemoveAll(s.Dir)
}
