package daemon

import (
	"bufio"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/store"
)

func TestResolveEgress(t *testing.T) {
	cfg := config.Default()
	cfg.Egress.Policies = map[string]config.EgressPolicy{"work": {Allow: []string{"a.example"}}}
	cases := []struct {
		req                 api.CreateVMRequest
		mode, policy, creds string
		err                 string
	}{
		{api.CreateVMRequest{}, "allow", "agents", "broker", ""},
		{api.CreateVMRequest{Egress: "all"}, "all", "", "copy", ""},
		{api.CreateVMRequest{Egress: "none", Credentials: "none"}, "none", "", "none", ""},
		{api.CreateVMRequest{Egress: "work"}, "allow", "work", "broker", ""},
		{api.CreateVMRequest{Egress: "allow", EgressPolicy: "work", Credentials: "copy"}, "allow", "work", "copy", ""},
		{api.CreateVMRequest{Allow: []string{"x.example:443", "*.y.example"}}, "allow", "agents", "broker", ""},
		{api.CreateVMRequest{Egress: "nope"}, "", "", "", `unknown egress mode or policy "nope"`},
		{api.CreateVMRequest{Egress: "allow", EgressPolicy: "nope"}, "", "", "", `unknown egress policy "nope"`},
		{api.CreateVMRequest{Allow: []string{"bad pattern"}}, "", "", "", `bad egress --allow pattern "bad pattern"`},
		{api.CreateVMRequest{Egress: "all", Allow: []string{"x.example"}}, "", "", "", "--allow needs the egress gateway"},
		{api.CreateVMRequest{Egress: "none", Credentials: "broker"}, "", "", "", "--credentials broker needs the egress gateway"},
		{api.CreateVMRequest{Credentials: "steal"}, "", "", "", `unknown credentials mode "steal"`},
	}
	for _, c := range cases {
		req := c.req
		mode, policy, err := resolveEgress(cfg, &req)
		if c.err != "" {
			var ae *api.Error
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.As(err, &ae) || ae.Code != api.CodeInvalid {
				t.Errorf("%+v: error %v, want invalid %q", c.req, err, c.err)
			}
			continue
		}
		if err != nil || mode != c.mode || policy != c.policy || req.Credentials != c.creds {
			t.Errorf("%+v: got %q %q %q %v, want %q %q %q", c.req, mode, policy, req.Credentials, err, c.mode, c.policy, c.creds)
		}
	}
	// The hint lists the policies there are.
	req := api.CreateVMRequest{Egress: "nope"}
	_, _, err := resolveEgress(cfg, &req)
	var ae *api.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Hint, "agents, work") {
		t.Errorf("hint %q does not list the policies", ae.Hint)
	}
}

func TestNetEgress(t *testing.T) {
	for mode, want := range map[string]string{"all": "all", "none": "none", "allow": "none"} {
		if got := netEgress(store.VM{Egress: mode}); got != want {
			t.Errorf("netEgress(%s) = %s, want %s", mode, got, want)
		}
	}
}

// TestFakeEgressGateway: a VM in mode allow gets a supervisor that takes
// the guest's streams to the gateway; records reach the log and the bus;
// a live change is seen by the next connection; stop and delete end it.
func TestFakeEgressGateway(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, func(c *config.Config) {
		c.Egress.Policies = map[string]config.EgressPolicy{"work": {Allow: []string{"a.example"}, Deny: []string{"b.a.example"}}}
	})
	d := h.open()
	id, err := d.CreateVM(ctx, api.CreateVMRequest{Name: "gw", Image: "base", Egress: "work", Allow: []string{"c.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if op := h.waitOp(d, id); op.State != api.OpSucceeded {
		t.Fatalf("create: %s", op.Error)
	}
	vm, _ := d.store.GetVM(ctx, "gw")
	if vm.Egress != "allow" || vm.EgressPolicy != "work" || !slices.Equal(vm.EgressAllow, []string{"c.example"}) || vm.Credentials != "broker" {
		t.Fatalf("recorded egress %q %q %v %q", vm.Egress, vm.EgressPolicy, vm.EgressAllow, vm.Credentials)
	}
	if !d.egress.supervised(vm.ID) {
		t.Fatal("no supervisor for a running gateway VM")
	}
	view := d.vmView(ctx, vm)
	if got := view.EgressSummary(); got != "allow (policy work + 1 rule)" {
		t.Errorf("summary %q", got)
	}
	pol, label, on := d.egress.policyFor(vm.ID)
	if !on || label != "work+1" || len(pol.Allow) != 2 || len(pol.Deny) != 1 {
		t.Errorf("policy %+v %q %t", pol, label, on)
	}

	events, cancel := d.bus.watch("gw")
	defer cancel()
	// The guest opens a stream as the agent's egress listener does.
	var s interface {
		Write([]byte) (int, error)
		Read([]byte) (int, error)
		Close() error
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if s, err = h.drv.OpenGuestStream(vm.Dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	if err := agentapi.WriteEgressLine(s, agentapi.EgressOpen{Kind: "tcp", Dst: "192.0.2.1:443", PID: 7, Process: "curl", Session: "s1"}); err != nil {
		t.Fatal(err)
	}
	_, _ = bufio.NewReader(s).ReadString(0) // until the gateway closes
	s.Close()
	select {
	case ev := <-events:
		if ev.Kind != api.EventEgress || ev.Egress == nil || ev.Egress.Decision != "deny" || ev.Egress.VM != "gw" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no egress event")
	}
	recs, err := d.egress.Log(ctx, vm, api.EgressLogQuery{Denied: true})
	if err != nil || len(recs) != 1 || recs[0].VMID != vm.ID || recs[0].ID == 0 {
		t.Fatalf("log %+v %v", recs, err)
	}

	// A live change.
	if _, err := d.egress.Change(ctx, vm, api.EgressChange{Allow: []string{"bad pattern"}}); err == nil || !strings.Contains(err.Error(), `"bad pattern"`) {
		t.Errorf("bad pattern: %v", err)
	}
	got, err := d.egress.Change(ctx, vm, api.EgressChange{Allow: []string{"d.example"}, Deny: []string{"c.example"}})
	if err != nil || !slices.Equal(got.EgressAllow, []string{"d.example"}) || !slices.Equal(got.EgressDeny, []string{"c.example"}) {
		t.Fatalf("change: %+v %v", got, err)
	}
	if _, label, _ := d.egress.policyFor(vm.ID); label != "work+2" {
		t.Errorf("the cached policy survived a change: %q", label)
	}
	v := d.egress.View(ctx, got)
	if !slices.Equal(v.EffectiveAllow, []string{"a.example", "d.example"}) || !slices.Equal(v.EffectiveDeny, []string{"b.a.example", "c.example"}) {
		t.Errorf("view %+v", v)
	}
	if _, err := d.egress.Change(ctx, vm, api.EgressChange{Remove: []string{"c.example", "d.example"}}); err != nil {
		t.Fatal(err)
	}
	if vm, _ = d.store.GetVM(ctx, vm.ID); len(vm.EgressAllow)+len(vm.EgressDeny) != 0 {
		t.Errorf("remove left %v %v", vm.EgressAllow, vm.EgressDeny)
	}

	if _, err := d.StopVM(ctx, "gw", true); err != nil {
		t.Fatal(err)
	}
	if d.egress.supervised(vm.ID) {
		t.Error("the supervisor outlived its VM's stop")
	}
	if _, err := d.StartVM(ctx, "gw", api.StartVMRequest{}); err != nil {
		t.Fatal(err)
	}
	if !d.egress.supervised(vm.ID) {
		t.Error("no supervisor after start")
	}
	if err := d.DeleteVM(ctx, "gw", true); err != nil {
		t.Fatal(err)
	}
	if d.egress.supervised(vm.ID) {
		t.Error("the supervisor outlived its VM")
	}
	if rows, _ := d.store.ListEgressLog(ctx, vm.ID, store.EgressFilter{}); len(rows) != 0 {
		t.Errorf("log rows outlived their VM: %d", len(rows))
	}
}

// TestFakeEgressAllHasNoGateway: egress all runs no supervisor and
// refuses policy changes.
func TestFakeEgressAllHasNoGateway(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newFakeHost(t, func(c *config.Config) { c.VM.Egress = config.EgressAll })
	d := h.open()
	vm := h.mustCreate(d, "open")
	if vm.Egress != "all" || vm.Credentials != "copy" || d.egress.supervised(vm.ID) {
		t.Fatalf("egress all VM: %q %q supervised=%t", vm.Egress, vm.Credentials, d.egress.supervised(vm.ID))
	}
	var ae *api.Error
	if _, err := d.egress.Change(ctx, vm, api.EgressChange{Allow: []string{"a.example"}}); !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Errorf("change of an egress all VM: %v", err)
	}
}

// TestFakeEgressReadopt: a restarted daemon supervises the gateway VMs
// it adopts.
func TestFakeEgressReadopt(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d1 := h.open()
	vm := h.mustCreate(d1, "kept")
	h.close(d1)
	d2 := h.open()
	if !d2.egress.supervised(vm.ID) {
		t.Fatal("the adopted gateway VM has no supervisor")
	}
}

// TestFakeEgressVMMDies: a supervisor whose VMM died ends by itself.
func TestFakeEgressVMMDies(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t, nil)
	d := h.open()
	vm := h.mustCreate(d, "crashy")
	if !d.egress.supervised(vm.ID) {
		t.Fatal("no supervisor")
	}
	h.drv.Exit(vm.Dir)
	for deadline := time.Now().Add(15 * time.Second); d.egress.supervised(vm.ID); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor of a dead VMM keeps running")
		}
	}
}
