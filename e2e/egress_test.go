package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

// TestEgressPolicy: a VM in egress mode allow records its policy, shows
// it, takes live changes, and has no route to the host: its NIC is as
// closed as egress none, the gateway on the agent channel is its only
// way out.
func TestEgressPolicy(t *testing.T) {
	in := shared(t)
	const name = "e2e-egress"
	vm := in.createVM(t, name, "--egress", "allow", "--allow", "a.example")
	defer in.run(nil, "vm", "delete", name, "--force")
	// The shared instance copies credentials ([credentials] mode =
	// "copy"); TestEgressGateway has the broker.
	if vm.Egress != "allow" || vm.EgressPolicy != "agents" || !slices.Equal(vm.EgressAllow, []string{"a.example"}) || vm.Credentials != "copy" {
		t.Fatalf("created VM's egress: %q %q %v %q", vm.Egress, vm.EgressPolicy, vm.EgressAllow, vm.Credentials)
	}
	if r := in.must(t, "vm", "show", name); !strings.Contains(r.stdout, "allow (policy agents + 1 rule)") {
		t.Errorf("vm show does not say the policy:\n%s", r.stdout)
	}

	in.must(t, "vm", "egress", "allow", name, "b.example:443")
	in.must(t, "vm", "egress", "deny", name, "a.example")
	var v api.EgressView
	r := in.must(t, "vm", "egress", "show", name, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("egress show --json: %v\n%s", err, r.stdout)
	}
	if !slices.Equal(v.Allow, []string{"b.example:443"}) || !slices.Equal(v.Deny, []string{"a.example"}) || !slices.Contains(v.EffectiveAllow, "api.anthropic.com:443") {
		t.Errorf("egress after allow and deny: %+v", v)
	}
	if r := in.run(nil, "vm", "egress", "allow", name, "bad pattern"); r.code != 1 || !strings.Contains(r.stderr, `"bad pattern"`) {
		t.Errorf("bad pattern: %s", r)
	}

	// The host's 127.0.0.1 is out of reach, as with egress none. The
	// guest's connect may succeed (the agent's redirect accepts it
	// locally and asks the gateway, which refuses an internal address):
	// what counts is that nothing on the host was reached.
	port, accepted := hostListener(t)
	for _, addr := range []string{fmt.Sprintf("10.0.2.2/%d", port), "10.0.2.2/22"} {
		r := in.run(nil, "vm", "exec", name, "--", "timeout", "8", "bash", "-c", "exec 3<>/dev/tcp/"+addr+" && echo hi >&3 && cat <&3")
		if strings.TrimSpace(r.stdout) != "" {
			t.Errorf("guest in egress allow got an answer from %s: %s", addr, r)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the host listener accepted %d connection(s) from the guest", n)
	}

	var recs []api.EgressRecord
	r = in.must(t, "vm", "egress", "log", name, "--json")
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line == "" {
			continue
		}
		var rec api.EgressRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("egress log line %q: %v", line, err)
		}
		recs = append(recs, rec)
	}
	for _, rec := range recs {
		if rec.VM != name || rec.Decision == "" {
			t.Errorf("log record %+v", rec)
		}
		if strings.HasPrefix(rec.Addr, "10.0.2.2") && rec.Decision != "deny" {
			t.Errorf("a connection to the host was not denied: %+v", rec)
		}
	}
	t.Logf("%d egress record(s)", len(recs))
	in.must(t, "vm", "egress", "learn", name)
}
