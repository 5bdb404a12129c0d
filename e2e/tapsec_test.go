package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
)

// tapSecConfig leaves room for five guests (a /29), so two VMs and a
// spare address for the spoofing attempt fit.
const tapSecConfig = `[vm]
boot_timeout = "100s"
[network]
subnet = "172.30.0.0/29"
dns = ["172.30.0.1"]
[auth]
files = []
`

// probeScript defines probe HOST PORT LABEL in the guest: it prints
// LABEL=open or LABEL=closed depending on whether a TCP connection to
// HOST:PORT opens within 5 seconds.
const probeScript = `probe() { if timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then echo "$3=open"; else echo "$3=closed"; fi; }
`

// guestProbes runs script (after probeScript) in vm as root and returns
// the LABEL=state lines it printed.
func guestProbes(t *testing.T, in *instance, vm, script string) map[string]string {
	t.Helper()
	r := in.must(t, "vm", "exec", vm, "--", "bash", "-c", probeScript+script)
	out := map[string]string{}
	for _, line := range strings.Split(r.stdout, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && (v == "open" || v == "closed") {
			out[k] = v
		}
	}
	t.Logf("%s: %v", vm, out)
	return out
}

// TestTapContainment is a hostile guest in tap mode: one with --egress
// none changes its address, speaks IPv6 and tries to reach another VM on
// the bridge; one with --egress all tries to reach the first, and then
// a second one with --egress all (where no egress rule stands in the
// way), directly, routed through the host and over IPv6. Everything but
// the controls must be blocked, and the last VM to go restores
// ip_forward. The VMs run two at a time (TCG on a small machine).
func TestTapContainment(t *testing.T) {
	ns, in := tapInstance(t, tapSecConfig)
	prefix := instancePrefix(in.home)
	if got := strings.TrimSpace(ns.must(t, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "0" {
		t.Fatalf("a fresh namespace has ip_forward=%s, want 0", got)
	}

	open := in.createVM(t, "open", "--net", "tap", "--egress", "all")
	open = in.vm(t, open.Name)
	shut := in.createVM(t, "shut", "--net", "tap", "--egress", "none")
	shut = in.vm(t, shut.Name)
	t.Logf("open (egress all) at %s, shut (egress none) at %s", open.Address, shut.Address)

	// Targets on the host side of the bridge: IPv4, and IPv6 on an
	// address the bridge would answer to if IPv6 got through.
	bridge := prefix + "br"
	ns.must(t, "ip", "addr", "add", "fd00:b::1/64", "dev", bridge, "nodad")
	ns.listen(t, "172.30.0.1:8080")
	ns.listen(t, "[fd00:b::1]:8080")

	// Controls: the open guest reaches the host; the host reaches both
	// guests (ssh and the agent keep working with every rule in place).
	got := guestProbes(t, in, open.Name, `probe 172.30.0.1 8080 host
ip -6 addr add fd00:b::2/64 dev eth0 nodad
`)
	if got["host"] != "open" {
		t.Errorf("control: a guest with --egress all cannot reach the bridge address: %v", got)
	}
	for _, vm := range []string{open.Address, shut.Address} {
		if banner, err := sshBanner(ns, vm); err != nil || banner != "SSH-2.0" {
			t.Errorf("control: host cannot reach sshd at %s: %q %v", vm, banner, err)
		}
	}

	// The egress none guest: other VM, a new address, IPv6.
	spare := "172.30.0.6"
	got = guestProbes(t, in, shut.Name, fmt.Sprintf(`probe %[1]s 22 other_vm
probe 172.30.0.1 8080 host
ip addr flush dev eth0 scope global
ip addr add %[3]s/29 dev eth0
ip route replace default via 172.30.0.1
probe 172.30.0.1 8080 new_address_host
probe %[1]s 22 new_address_other_vm
ip addr flush dev eth0 scope global
ip addr add %[2]s/29 dev eth0
ip route replace default via 172.30.0.1
ip -6 addr add fd00:b::3/64 dev eth0 nodad
probe fd00:b::1 8080 ipv6_host
probe fd00:b::2 22 ipv6_other_vm
`, open.Address, shut.Address, spare))
	for _, k := range []string{"other_vm", "host", "new_address_host", "new_address_other_vm", "ipv6_host", "ipv6_other_vm"} {
		if got[k] != "closed" {
			t.Errorf("egress none guest: %s is %q, want closed", k, got[k])
		}
	}
	if banner, err := sshBanner(ns, shut.Address); err != nil || banner != "SSH-2.0" {
		t.Errorf("host cannot reach sshd at %s after the guest put its address back: %q %v", shut.Address, banner, err)
	}

	// The egress all guest: the other VM directly and routed through the
	// host, and over IPv6.
	probeOther := func(other api.VM, other6 string) {
		t.Helper()
		// Forget neighbours first: open2 takes the address shut had, and a
		// stale entry with shut's MAC would fail the probe for the wrong
		// reason.
		got = guestProbes(t, in, open.Name, fmt.Sprintf(`ip neigh flush dev eth0
probe %[1]s 22 other_vm
ip route add %[1]s/32 via 172.30.0.1
probe %[1]s 22 other_vm_routed
ip route del %[1]s/32 via 172.30.0.1
probe %[2]s 22 ipv6_other_vm
probe fd00:b::1 8080 ipv6_host
`, other.Address, other6))
		for _, k := range []string{"other_vm", "other_vm_routed", "ipv6_other_vm", "ipv6_host"} {
			if got[k] != "closed" {
				t.Errorf("egress all guest -> %s (egress %s): %s is %q, want closed", other.Name, other.Egress, k, got[k])
			}
		}
	}
	probeOther(shut, "fd00:b::3")

	// A second egress all VM in place of the egress none one: no egress
	// rule applies to either, and they still cannot talk. The second
	// one routes back through the host too, so that replies would have
	// a way if the forward were let through.
	in.must(t, "vm", "delete", shut.Name)
	open2 := in.createVM(t, "open2", "--net", "tap", "--egress", "all")
	open2 = in.vm(t, open2.Name)
	guestProbes(t, in, open2.Name, fmt.Sprintf(`ip -6 addr add fd00:b::4/64 dev eth0 nodad
ip route add %s/32 via 172.30.0.1
`, open.Address))
	probeOther(open2, "fd00:b::4")

	// While tap VMs run, forwarding is on (NAT needs it); the last one to
	// go puts the namespace back as it was.
	if got := strings.TrimSpace(ns.must(t, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Errorf("ip_forward with tap VMs = %s, want 1", got)
	}
	in.must(t, "vm", "delete", open2.Name)
	in.must(t, "vm", "delete", open.Name)
	if left := ownedObjects(t, ns, prefix); len(left) != 0 {
		t.Errorf("after delete, banger objects remain in the namespace: %v", left)
	}
	if got := strings.TrimSpace(ns.must(t, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "0" {
		t.Errorf("ip_forward after the last tap VM = %s, want 0 (as found)", got)
	}
	ns.checkForeign(t)
}
