package daemon

import (
	"context"
	"net/netip"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/store"
)

// The race: a connection misses the policy cache and reads the VM row;
// before it stores what it read, `vm egress deny` writes the row and
// drops the cache entry (there is none yet). The stale policy would then
// be cached, and the new deny never applied until the next change.
func TestEgressPolicyChangeDuringLoadIsNotLost(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "gw", ImageID: img.ID, Dir: t.TempDir(), State: api.VMRunning,
		Egress: config.EgressAllow, EgressPolicy: "agents"}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	e := newEgressEngine(egressDeps{store: d.store, cfg: d.cfg.Egress, bus: &d.bus, log: d.log, base: ctx})
	changed := false
	e.policyLoaded = func() {
		if changed {
			return
		}
		changed = true
		if _, err := e.Change(ctx, vm, api.EgressChange{Deny: []string{"github.com"}}); err != nil {
			t.Error(err)
		}
	}
	e.policyFor(vm.ID)
	pol, _, _ := e.policyFor(vm.ID)
	if d := pol.Decide("github.com", netipInvalid, 443); d.Allow {
		t.Fatal("the deny made during a policy load was lost: github.com is still allowed")
	}
}

var netipInvalid = netip.Addr{}
