package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// An image's ready snapshot: promote boots the image once and saves it,
// `vm create` then restores from it (stage "restore", no "boot"), each
// VM with its own hostname and machine id; --cold boots, and a create
// the snapshot does not fit (another memory size) boots cold and says
// why.
func TestReadyImage(t *testing.T) {
	requireVM(t)
	in := newInstance(t, "[vm]\nboot_timeout = \"100s\"\negress = \"none\"\n[image]\nready_snapshot = true\n[credentials]\nmode = \"none\"\n")
	defer in.shutdown()
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	var imgs []api.Image
	if err := json.Unmarshal([]byte(in.must(t, "image", "list", "--json").stdout), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("images %v %v", imgs, err)
	}
	name := imgs[0].Name
	in.must(t, "image", "promote", name)
	deadline := time.Now().Add(6 * time.Minute)
	var img api.Image
	for {
		if err := json.Unmarshal([]byte(in.must(t, "image", "show", name, "--json").stdout), &img); err != nil {
			t.Fatal(err)
		}
		if img.ReadySnapshot != "" {
			break
		}
		ops := in.must(t, "op", "list").stdout
		if strings.Contains(ops, "image.ready") && strings.Contains(ops, "failed") {
			t.Fatalf("ready snapshot failed:\n%s\ndaemon log:\n%s", ops, in.daemonLog())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready snapshot after 6 minutes:\n%s\ndaemon log:\n%s", ops, in.daemonLog())
		}
		time.Sleep(3 * time.Second)
	}
	t.Logf("ready snapshot %s", img.ReadySnapshot)

	create := func(vm string, extra ...string) (api.VM, string) {
		t.Helper()
		args := append([]string{"vm", "create", vm}, extra...)
		r := in.run(nil, args...)
		if r.code != 0 {
			t.Fatalf("vm create %s: %s\ndaemon log:\n%s", vm, r, in.daemonLog())
		}
		return in.vm(t, vm), r.stderr + r.stdout
	}
	t0 := time.Now()
	r1, out := create("r1")
	t.Logf("create from the ready snapshot took %s:\n%s", time.Since(t0).Round(time.Millisecond), out)
	if !strings.Contains(out, "restore") || strings.Contains(out, "✓ boot") || r1.Snapshot != img.ReadySnapshot {
		t.Errorf("r1 was not restored from %s (snapshot %q):\n%s", img.ReadySnapshot, r1.Snapshot, out)
	}
	r2, _ := create("r2")
	ids := map[string]string{}
	for _, vm := range []api.VM{r1, r2} {
		host := strings.TrimSpace(in.must(t, "vm", "exec", vm.Name, "--", "hostname").stdout)
		if host != vm.Name {
			t.Errorf("%s has hostname %q", vm.Name, host)
		}
		id := strings.TrimSpace(in.must(t, "vm", "exec", vm.Name, "--", "cat", "/etc/machine-id").stdout)
		if other, ok := ids[id]; ok || len(id) != 32 {
			t.Errorf("%s has machine id %q (also %q's)", vm.Name, id, other)
		}
		ids[id] = vm.Name
		// The clock is the host's, not the snapshot's.
		guest := strings.TrimSpace(in.must(t, "vm", "exec", vm.Name, "--", "date", "+%s").stdout)
		var sec int64
		if err := json.Unmarshal([]byte(guest), &sec); err != nil || time.Since(time.Unix(sec, 0)).Abs() > 30*time.Second {
			t.Errorf("%s clock %q, host %d", vm.Name, guest, time.Now().Unix())
		}
	}
	_, out = create("r3", "--cold")
	if !strings.Contains(out, "✓ boot") {
		t.Errorf("--cold did not boot:\n%s", out)
	}
	_, out = create("r4", "--memory", "768", "--no-wait-services")
	if !strings.Contains(out, "cold") || !strings.Contains(out, "--memory") || !strings.Contains(out, "✓ boot") {
		t.Errorf("a create the snapshot does not fit did not boot cold with a reason:\n%s", out)
	}
	for _, vm := range []string{"r1", "r2", "r3", "r4"} {
		in.must(t, "vm", "delete", vm)
	}
	// The image goes with its ready snapshot.
	in.must(t, "image", "delete", name)
	if r := in.must(t, "vm", "snapshot", "list", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("snapshots left after the image delete: %s", r.stdout)
	}
}
