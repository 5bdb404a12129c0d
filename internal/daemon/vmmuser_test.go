package daemon

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/vmm"
)

// guardHost is the fake network host with a local guard that records
// what was asked of it.
type guardHost struct {
	*network.Fake
	applied []network.LocalGuard
	deleted []string
}

func (g *guardHost) ApplyLocalGuard(_ context.Context, lg network.LocalGuard) error {
	g.applied = append(g.applied, lg)
	return nil
}

func (g *guardHost) DeleteLocalGuard(_ context.Context, table string) error {
	g.deleted = append(g.deleted, table)
	return nil
}

func TestRunAsGivesEachVMItsOwnUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("VMMs get users of their own only under a root daemon")
	}
	ctx := context.Background()
	d, _ := tapDaemon(t, "172.30.0.0/24")
	g := &guardHost{Fake: network.NewFake()}
	d.net.Host = g
	d.cfg.VMMProcess.UIDRange = "3100000-3100009"
	newVM := func(name, vmmName, netMode, egress string) store.VM {
		vm := tapVM(t, d, name, egress)
		vm.VMM, vm.NetMode = vmmName, netMode
		return vm
	}
	boot := func(vm store.VM, jailer, persist bool, undo *cleanup) vmm.Spec {
		t.Helper()
		spec := vmm.Spec{ID: vm.ID, Egress: vm.Egress, Jailer: jailer}
		if vm.NetMode == "tap" {
			spec.Net.Mode = vmm.NetTap
		}
		if err := d.runAs(ctx, &vm, &spec, persist, undo); err != nil {
			t.Fatal(err)
		}
		return spec
	}
	var undo cleanup
	a := boot(newVM("a", config.VMMQEMU, "user", "all"), false, true, &undo)
	b := boot(newVM("b", config.VMMQEMU, "user", "none"), false, true, &undo)
	if a.UID != 3100000 || a.GID != a.UID || b.UID != 3100001 {
		t.Fatalf("uids %d/%d and %d, want 3100000 and 3100001", a.UID, a.GID, b.UID)
	}
	// Only the user-mode VM with egress all needed the guard.
	if len(g.applied) != 1 || g.applied[0].Table != d.net.Names.GuardTable() || g.applied[0].First != 3100000 || g.applied[0].Last != 3100009 ||
		len(g.applied[0].Blocked) != 1 || g.applied[0].Blocked[0].String() != "172.30.0.0/24" {
		t.Fatalf("guard applied %+v", g.applied)
	}
	if fc := boot(newVM("fc", config.VMMFirecracker, "tap", "all"), false, true, &undo); fc.UID != 0 {
		t.Errorf("unjailed Firecracker got uid %d", fc.UID)
	}
	if fj := boot(newVM("fj", config.VMMFirecracker, "tap", "all"), true, true, &undo); fj.UID != 3100002 {
		t.Errorf("jailed Firecracker got uid %d, want its own 3100002", fj.UID)
	}
	// A throwaway VM gives its uid back when its boot is undone.
	var tundo cleanup
	tmp := store.VM{ID: "vthrow", Name: "verify", VMM: config.VMMQEMU, Egress: "none"}
	if s := boot(tmp, false, false, &tundo); s.UID != 3100003 {
		t.Fatalf("throwaway uid %d", s.UID)
	}
	tundo.run()
	if _, err := d.store.VMMUser(ctx, "vthrow"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("throwaway uid kept: %v", err)
	}
	// Guard follows the running VMs at start and shutdown.
	g.applied, g.deleted = nil, nil
	d.netEngine().syncLocalGuard(ctx)
	if len(g.deleted) != 1 || len(g.applied) != 0 {
		t.Fatalf("no VM running: applied %v deleted %v", g.applied, g.deleted)
	}
	vms, _ := d.store.ListVMs(ctx)
	for _, vm := range vms {
		if vm.Name == "a" {
			if err := d.store.SetVMState(ctx, vm.ID, api.VMRunning, ""); err != nil {
				t.Fatal(err)
			}
			vm.NetMode = "user"
			vm.State = api.VMRunning
			if err := d.store.UpdateVM(ctx, &vm); err != nil {
				t.Fatal(err)
			}
		}
	}
	d.netEngine().syncLocalGuard(ctx)
	if len(g.applied) != 1 {
		t.Fatalf("user-mode egress-all VM running: applied %v deleted %v", g.applied, g.deleted)
	}
	// Per-VM users off: nothing is allocated.
	d.cfg.VMMProcess.UIDRange = ""
	if s := boot(newVM("off", config.VMMQEMU, "user", "all"), false, true, &undo); s.UID != 0 {
		t.Errorf("uid_range empty: uid %d", s.UID)
	}
}
