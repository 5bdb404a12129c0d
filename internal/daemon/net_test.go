package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// tapDaemon is a daemon whose tap networking runs against the fake host.
func tapDaemon(t *testing.T, subnet string) (*Daemon, *network.Fake) {
	t.Helper()
	d := testDaemon(t, nil)
	d.layout = paths.Layout{DataDir: t.TempDir()}
	d.cfg.Network.Subnet = subnet
	d.cfg.Network.DNS = []string{"192.0.2.53"}
	f := network.NewFake()
	var err error
	if d.net, err = d.newNetwork(f); err != nil {
		t.Fatal(err)
	}
	return d, f
}

func tapVM(t *testing.T, d *Daemon, name, egress string) store.VM {
	t.Helper()
	ctx := context.Background()
	img := store.Image{ID: "img-" + name, Name: "img-" + name, Dir: t.TempDir(), State: store.ImageStateManaged, Suite: "bookworm"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{ID: newID(4), Name: name, ImageID: img.ID, State: api.VMCreating, CPUs: 1, MemoryMiB: 512,
		Egress: egress, NetMode: "tap", Dir: t.TempDir()}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// owned is the fake host's state that belongs to the daemon's instance.
func owned(d *Daemon, f *network.Fake) []string {
	var out []string
	for _, s := range f.State() {
		if strings.Contains(s, d.layout.InstancePrefix()) {
			out = append(out, s)
		}
	}
	return out
}

func TestTapCreateUndoReleasesEverything(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/24")
	vm := tapVM(t, d, "one", "all")
	var undo cleanup
	if err := d.netEngine().leaseNet(ctx, &vm, &undo); err != nil {
		t.Fatal(err)
	}
	if err := d.netEngine().attachNet(ctx, vm, &undo); err != nil {
		t.Fatal(err)
	}
	tap := d.net.Names.Tap(vm.ID)
	state := strings.Join(f.State(), "\n")
	if !strings.Contains(state, "link "+tap+" tuntap master="+d.net.Names.Bridge()) {
		t.Fatalf("tap not attached:\n%s", state)
	}
	spec, err := d.vmSpec(ctx, &vm, store.Image{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"banger.ip=172.30.0.2/24", "banger.gw=172.30.0.1", "banger.dns=192.0.2.53"} {
		if !strings.Contains(spec.Cmdline, want) {
			t.Errorf("cmdline lacks %q: %s", want, spec.Cmdline)
		}
	}
	if strings.Contains(spec.Cmdline, "10.0.2.15") || len(spec.Forwards) != 0 {
		t.Errorf("user-mode leftovers in a tap spec: %s %v", spec.Cmdline, spec.Forwards)
	}
	if spec.Net.Mode != "tap" || spec.Net.TapDevice != tap || spec.Net.MAC != network.MAC(vm.ID) {
		t.Errorf("spec.Net = %+v", spec.Net)
	}
	// A create that fails later unwinds: no TAP, bridge, table or lease.
	undo.run()
	if left := owned(d, f); len(left) != 0 {
		t.Errorf("after undo: %v", left)
	}
	if ls, _ := d.store.ListLeases(ctx); len(ls) != 0 {
		t.Errorf("leases after undo: %+v", ls)
	}
}

func TestValidateNet(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/30") // one guest address
	var apiErr *api.Error
	req := api.CreateVMRequest{Net: "bogus"}
	if err := d.netEngine().validateNet(ctx, &req); !errors.As(err, &apiErr) || apiErr.Code != api.CodeInvalid || !strings.Contains(apiErr.Hint, "--net tap") {
		t.Fatalf("bogus: %v", err)
	}
	req = api.CreateVMRequest{}
	if err := d.netEngine().validateNet(ctx, &req); err != nil || req.Net != "user" {
		t.Fatalf("default: %v %q", err, req.Net)
	}
	vm := tapVM(t, d, "one", "none")
	var undo cleanup
	if err := d.netEngine().leaseNet(ctx, &vm, &undo); err != nil {
		t.Fatal(err)
	}
	req = api.CreateVMRequest{Net: "tap"}
	err := d.netEngine().validateNet(ctx, &req)
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.Message, "no free address") || !strings.Contains(apiErr.Hint, "[network] subnet") {
		t.Fatalf("exhausted: %v", err)
	}
	// The allocation itself says the same when validation raced.
	other := tapVM(t, d, "two", "all")
	if err := d.netEngine().leaseNet(ctx, &other, &undo); !errors.As(err, &apiErr) || !strings.Contains(apiErr.Message, "no free address") {
		t.Fatalf("exhausted allocation: %v", err)
	}
	if len(f.Calls) != 0 {
		t.Errorf("validation touched the host: %v", f.Calls)
	}
}

func TestReconcileNetwork(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/24")
	keep := tapVM(t, d, "keep", "none")
	gone := tapVM(t, d, "gone", "all")
	for _, vm := range []*store.VM{&keep, &gone} {
		var undo cleanup
		if err := d.netEngine().leaseNet(ctx, vm, &undo); err != nil {
			t.Fatal(err)
		}
		if err := d.netEngine().attachNet(ctx, *vm, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A VM deleted behind the daemon's back (its lease goes with it) and
	// a foreign TAP: the first's TAP is an orphan, the second is not ours.
	if err := d.store.DeleteVM(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	f.AddForeign("tap0", network.KindTap)
	if err := d.netEngine().reconcileNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	state := f.State()
	has := func(s string) bool {
		return slices.ContainsFunc(state, func(l string) bool { return strings.HasPrefix(l, s) })
	}
	if !has("link "+d.net.Names.Tap(keep.ID)) || !has("link tap0") {
		t.Errorf("reconcile removed a live or foreign link:\n%s", strings.Join(state, "\n"))
	}
	if has("link " + d.net.Names.Tap(gone.ID)) {
		t.Errorf("orphan tap survived:\n%s", strings.Join(state, "\n"))
	}
	// keep has egress none: its drop rules are in the rewritten table.
	if !has("table "+d.net.Names.Table()) || !strings.Contains(strings.Join(state, "\n"), `ip saddr 172.30.0.2 drop`) {
		t.Errorf("nat table wrong:\n%s", strings.Join(state, "\n"))
	}
	// Deleting the last tap VM's network leaves nothing of this instance.
	if err := d.netEngine().detachNet(ctx, keep); err != nil {
		t.Fatal(err)
	}
	if left := owned(d, f); len(left) != 0 {
		t.Errorf("after the last detach: %v", left)
	}
}

func TestHostResolvers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver fe80::1\nsearch lan\nnameserver 198.51.100.7\n"), 0o644)
	if got := hostResolvers(p); !slices.Equal(got, []string{"192.0.2.1", "198.51.100.7"}) {
		t.Errorf("hostResolvers = %v", got)
	}
	if got := hostResolvers(filepath.Join(t.TempDir(), "missing")); got != nil {
		t.Errorf("missing file: %v", got)
	}
}

// A tap VM's port is pinned to the MAC and address of its lease, and the
// port is isolated from the other VMs' ports.
func TestTapPortPinnedToLease(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/24")
	vm := tapVM(t, d, "one", "none")
	var undo cleanup
	if err := d.netEngine().leaseNet(ctx, &vm, &undo); err != nil {
		t.Fatal(err)
	}
	if err := d.netEngine().attachNet(ctx, vm, nil); err != nil {
		t.Fatal(err)
	}
	l, err := d.store.LeaseForVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	state := strings.Join(f.State(), "\n")
	for _, want := range []string{
		"link " + l.Tap + " tuntap master=" + d.net.Names.Bridge() + " isolated up",
		`iifname "` + l.Tap + `" ether saddr != ` + l.MAC + " drop",
		`iifname "` + l.Tap + `" ether type ip ip saddr != 172.30.0.2 drop`,
		`iifname "` + l.Tap + `" drop`,
		`forward: iifname "` + d.net.Names.Bridge() + `" oifname "` + d.net.Names.Bridge() + `" drop`,
	} {
		if !strings.Contains(state, want) {
			t.Errorf("state lacks %q:\n%s", want, state)
		}
	}
}

// ip_forward goes back off with the last tap VM, even when the daemon
// that switched it on died: the record in the data directory tells its
// successor.
func TestForwardingRestoredAcrossDaemons(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/24")
	vm := tapVM(t, d, "one", "all")
	var undo cleanup
	if err := d.netEngine().leaseNet(ctx, &vm, &undo); err != nil {
		t.Fatal(err)
	}
	if err := d.netEngine().attachNet(ctx, vm, nil); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(d.layout.DataDir, network.FileForwardRecord)
	if on, _ := f.Forwarding(ctx); !on {
		t.Fatal("forwarding off with a tap VM")
	}
	if _, err := os.Stat(record); err != nil {
		t.Fatalf("no record of the original ip_forward: %v", err)
	}
	// Shutdown with a tap VM running leaves forwarding on: it still
	// needs it.
	d.netEngine().closeNetwork(ctx)
	if on, _ := f.Forwarding(ctx); !on {
		t.Fatal("shutdown switched forwarding off under a running tap VM")
	}
	// The daemon dies; the VM is deleted behind its back; a new daemon
	// (a new manager on the same data directory) reconciles.
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	var err error
	if d.net, err = d.newNetwork(f); err != nil {
		t.Fatal(err)
	}
	if err := d.netEngine().reconcileNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); on {
		t.Error("forwarding left on after the last tap VM went")
	}
	if _, err := os.Stat(record); !os.IsNotExist(err) {
		t.Errorf("record survived: %v", err)
	}
}

// When another banger instance's bridge kept forwarding on at the last
// detach, the daemon's shutdown tries again.
func TestForwardingRestoredAtShutdown(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/24")
	vm := tapVM(t, d, "one", "all")
	var undo cleanup
	if err := d.netEngine().leaseNet(ctx, &vm, &undo); err != nil {
		t.Fatal(err)
	}
	if err := d.netEngine().attachNet(ctx, vm, nil); err != nil {
		t.Fatal(err)
	}
	f.AddForeign("bg0f0f0fbr", network.KindBridge)
	if err := d.netEngine().detachNet(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := d.store.ReleaseLease(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); !on {
		t.Fatal("forwarding switched off under another instance")
	}
	if err := f.DeleteLink(ctx, "bg0f0f0fbr"); err != nil {
		t.Fatal(err)
	}
	d.netEngine().closeNetwork(ctx)
	if on, _ := f.Forwarding(ctx); on {
		t.Error("shutdown with no tap VM left forwarding on")
	}
}

// TestNetEngineOverDeps: the network engine takes its defaults from its
// deps, not from a daemon's config.
func TestNetEngineOverDeps(t *testing.T) {
	ctx := context.Background()
	d, f := tapDaemon(t, "172.30.0.0/24")
	e := newNetEngine(netDeps{store: d.store, mgr: d.net, mu: &sync.Mutex{}, log: d.log,
		defaultNet: config.NetTap, dns: []string{"192.0.2.9"}})
	req := api.CreateVMRequest{}
	if err := e.validateNet(ctx, &req); err != nil || req.Net != config.NetTap {
		t.Fatalf("default: %v %q", err, req.Net)
	}
	args := e.tapKernelArgs(store.Lease{Addr: netip.MustParsePrefix("172.30.0.2/24")})
	want := []string{"banger.ip=172.30.0.2/24", "banger.gw=172.30.0.1", "banger.dns=192.0.2.9"}
	if !slices.Equal(args, want) {
		t.Fatalf("kernel args = %q, want %q", args, want)
	}
	if len(f.Calls) != 0 {
		t.Errorf("the engine touched the host: %v", f.Calls)
	}
}
