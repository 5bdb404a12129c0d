package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const prefix = "bg1a2b3c"

func newManager(t *testing.T) (*Manager, *Fake) {
	t.Helper()
	f := NewFake()
	return &Manager{Host: f, Names: Names{Prefix: prefix}, Subnet: netip.MustParsePrefix("172.30.0.0/24"), StateDir: t.TempDir()}, f
}

// member is VM id's place on the network, with its MAC as banger makes it.
func member(m *Manager, id, addr string, isolated bool) Member {
	return Member{Tap: m.Names.Tap(id), MAC: MAC(id), Addr: netip.MustParseAddr(addr), Isolated: isolated}
}

// portRules is what the bridge table holds for one port.
func portRules(tap, mac, addr string) string {
	return fmt.Sprintf(`prerouting: iifname %[1]q ether saddr != %[2]s drop; `+
		`prerouting: iifname %[1]q ether type ip ip saddr != %[3]s drop; `+
		`prerouting: iifname %[1]q ether type ip accept; `+
		`prerouting: iifname %[1]q ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether %[2]s arp saddr ip %[3]s accept; `+
		`prerouting: iifname %[1]q drop; `+
		`forward: iifname %[1]q drop`, tap, mac, addr)
}

func TestNamesFitIFNAMSIZ(t *testing.T) {
	n := Names{Prefix: prefix}
	if err := n.Check(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"ab12cd34", "ab12cd34ef56aa00", "a"} {
		tap := n.Tap(id)
		if len(tap) > IFNameMax {
			t.Errorf("Tap(%q) = %q: %d bytes > %d", id, tap, len(tap), IFNameMax)
		}
		if !n.IsTap(tap) {
			t.Errorf("IsTap(%q) = false", tap)
		}
	}
	if got := n.Tap("ab12cd34"); got != "bg1a2b3ctab12cd" || len(got) != IFNameMax {
		t.Errorf("Tap = %q, want bg1a2b3ctab12cd (15 bytes)", got)
	}
	if n.Bridge() != "bg1a2b3cbr" || n.IsTap(n.Bridge()) {
		t.Errorf("Bridge = %q (IsTap %v)", n.Bridge(), n.IsTap(n.Bridge()))
	}
	for _, foreign := range []string{"tap0", "bg9f9f9ftab12cd", "bg1a2b3ct", "eth0", "docker0"} {
		if n.IsTap(foreign) {
			t.Errorf("IsTap(%q) = true; it is not this instance's", foreign)
		}
	}
	if err := (Names{Prefix: "waytoolongprefix"}).Check(); err == nil {
		t.Error("Check accepts a prefix that overflows IFNAMSIZ")
	}
}

func TestMAC(t *testing.T) {
	a, b := MAC("ab12cd34"), MAC("ab12cd35")
	if a != MAC("ab12cd34") {
		t.Error("MAC is not stable")
	}
	if a == b {
		t.Error("two VMs share a MAC")
	}
	if !strings.HasPrefix(a, "02:") || len(a) != 17 {
		t.Errorf("MAC %q is not a locally administered unicast address", a)
	}
}

func TestParseSubnet(t *testing.T) {
	if p, err := ParseSubnet("172.30.0.0/24"); err != nil || p.String() != "172.30.0.0/24" {
		t.Fatalf("%v %v", p, err)
	}
	for _, bad := range []string{"", "nonsense", "172.30.0.1/24", "fd00::/64", "10.0.0.0/31", "10.0.0.0/4", "172.30.0.0"} {
		if _, err := ParseSubnet(bad); err == nil {
			t.Errorf("ParseSubnet(%q) accepted", bad)
		}
	}
	if g := Gateway(netip.MustParsePrefix("172.30.0.0/24")); g.String() != "172.30.0.1/24" {
		t.Errorf("Gateway = %s", g)
	}
}

func TestAttachDetach(t *testing.T) {
	ctx := context.Background()
	m, f := newManager(t)
	a := member(m, "aaaaaaaa", "172.30.0.2", false)
	b := member(m, "bbbbbbbb", "172.30.0.3", true)
	if err := m.Attach(ctx, a.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(ctx, b.Tap, []Member{a, b}); err != nil {
		t.Fatal(err)
	}
	// Both TAPs are isolated ports, each pinned to its MAC and address;
	// nothing is routed from the bridge back into it.
	want := []string{
		"bridge table banger_bg1a2b3c: " + portRules(a.Tap, a.MAC, "172.30.0.2") + "; " + portRules(b.Tap, b.MAC, "172.30.0.3"),
		"ip_forward=1",
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link bg1a2b3ctaaaaaa tuntap master=bg1a2b3cbr isolated up",
		"link bg1a2b3ctbbbbbb tuntap master=bg1a2b3cbr isolated up",
		`table banger_bg1a2b3c: postrouting: ip saddr 172.30.0.0/24 oifname != "bg1a2b3cbr" masquerade; ` +
			`forward: iifname "bg1a2b3cbr" oifname "bg1a2b3cbr" drop; ` +
			`forward: iifname "bg1a2b3cbr" ip saddr 172.30.0.3 drop; ` +
			`input: iifname "bg1a2b3cbr" ip saddr 172.30.0.3 ct state != established,related drop`,
	}
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state after two attaches:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Detaching the isolated VM drops its rules and its TAP only.
	if err := m.Detach(ctx, b.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"bridge table banger_bg1a2b3c: " + portRules(a.Tap, a.MAC, "172.30.0.2"),
		"ip_forward=1",
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link bg1a2b3ctaaaaaa tuntap master=bg1a2b3cbr isolated up",
		`table banger_bg1a2b3c: postrouting: ip saddr 172.30.0.0/24 oifname != "bg1a2b3cbr" masquerade; ` +
			`forward: iifname "bg1a2b3cbr" oifname "bg1a2b3cbr" drop`,
	}
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state after detach:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The last one out takes the bridge and both tables with it, and
	// switches forwarding back off as it was found.
	if err := m.Detach(ctx, a.Tap, nil); err != nil {
		t.Fatal(err)
	}
	if got := f.State(); len(got) != 0 {
		t.Fatalf("state after last detach: %q", got)
	}
	// Detaching something already gone is not an error (a failed create
	// unwinds whatever part of Attach happened).
	if err := m.Detach(ctx, a.Tap, nil); err != nil {
		t.Fatalf("second detach: %v", err)
	}
}

func TestAttachFailureNamesStep(t *testing.T) {
	m, _ := newManager(t)
	err := m.Attach(context.Background(), "this-name-is-far-too-long", nil)
	if err == nil || !strings.Contains(err.Error(), "create tap this-name-is-far-too-long") {
		t.Fatalf("err = %v", err)
	}
}

func TestReconcileRemovesOnlyOwnOrphans(t *testing.T) {
	ctx := context.Background()
	m, f := newManager(t)
	live := member(m, "11111111", "172.30.0.2", false)
	orphan := m.Names.Tap("22222222")
	both := []Member{live, member(m, "22222222", "172.30.0.3", true)}
	if err := m.Attach(ctx, live.Tap, both); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(ctx, orphan, both); err != nil {
		t.Fatal(err)
	}
	// Things banger did not make, some with names that look close.
	f.AddForeign("tap0", KindTap)
	f.AddForeign("bg9f9f9ft333333", KindTap) // another instance's TAP
	f.AddForeign("bg9f9f9fbr", KindBridge)   // another instance's bridge
	f.AddForeign("docker0", KindBridge)
	f.AddForeign("banger_bg9f9f9f", "") // another instance's table
	f.AddForeign("filter", "")
	f.AddForeign("banger_bg9f9f9f", "bridge-table")
	f.AddForeign("filter", "bridge-table")

	if err := m.Reconcile(ctx, []Member{live}); err != nil {
		t.Fatal(err)
	}
	// The orphan's port rules went with it.
	want := []string{
		"bridge table banger_bg1a2b3c: " + portRules(live.Tap, live.MAC, "172.30.0.2"),
		"bridge table banger_bg9f9f9f: foreign",
		"bridge table filter: foreign",
		"ip_forward=1",
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link " + live.Tap + " tuntap master=bg1a2b3cbr isolated up",
		"link bg9f9f9fbr bridge up",
		"link bg9f9f9ft333333 tuntap up",
		"link docker0 bridge up",
		"link tap0 tuntap up",
		`table banger_bg1a2b3c: postrouting: ip saddr 172.30.0.0/24 oifname != "bg1a2b3cbr" masquerade; ` +
			`forward: iifname "bg1a2b3cbr" oifname "bg1a2b3cbr" drop`,
		"table banger_bg9f9f9f: foreign",
		"table filter: foreign",
	}
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reconcile:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// With no leases left, everything of this instance goes and nothing
	// else. Forwarding stays on: another instance's bridge says it may
	// still have tap VMs that need it.
	if err := m.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"bridge table banger_bg9f9f9f: foreign",
		"bridge table filter: foreign",
		"ip_forward=1",
		"link bg9f9f9fbr bridge up",
		"link bg9f9f9ft333333 tuntap up",
		"link docker0 bridge up",
		"link tap0 tuntap up",
		"table banger_bg9f9f9f: foreign",
		"table filter: foreign",
	}
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after empty reconcile:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestReconcileRestoresMissingPieces(t *testing.T) {
	// After a host reboot the kernel objects are gone but the leases are
	// not: reconcile brings bridge, NAT and TAPs back, and rewrites a
	// stale table (a different subnet in it).
	ctx := context.Background()
	m, f := newManager(t)
	old := *m
	old.Subnet = netip.MustParsePrefix("10.1.0.0/24")
	mb := member(m, "cafecafe", "172.30.0.2", false)
	if err := old.Attach(ctx, mb.Tap, []Member{mb}); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteLink(ctx, mb.Tap); err != nil {
		t.Fatal(err)
	}
	if err := m.Reconcile(ctx, []Member{mb}); err != nil {
		t.Fatal(err)
	}
	state := strings.Join(f.State(), "\n")
	for _, want := range []string{
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link " + mb.Tap + " tuntap master=bg1a2b3cbr isolated up",
		"ip saddr 172.30.0.0/24",
		"bridge table banger_bg1a2b3c: " + portRules(mb.Tap, mb.MAC, "172.30.0.2"),
	} {
		if !strings.Contains(state, want) {
			t.Errorf("state lacks %q:\n%s", want, state)
		}
	}
	if strings.Contains(state, "10.1.0.0/24 oifname") {
		t.Errorf("stale NAT rule survived:\n%s", state)
	}
}

func TestMasqueradeExprs(t *testing.T) {
	if got := netipMask(20); !reflect.DeepEqual(got, []byte{255, 255, 240, 0}) {
		t.Errorf("mask /20 = %v", got)
	}
	if got := ifname("br0"); len(got) != 16 || string(got[:3]) != "br0" || got[3] != 0 {
		t.Errorf("ifname = %q", got)
	}
	if n := len(masqueradeExprs(NAT{Subnet: netip.MustParsePrefix("172.30.0.0/24"), Bridge: "b"})); n != 6 {
		t.Errorf("masquerade has %d expressions, want 6", n)
	}
}

func TestPortFilterRefusesUnpinnablePorts(t *testing.T) {
	m, _ := newManager(t)
	for _, bad := range []Member{
		{Tap: m.Names.Tap("aaaaaaaa"), Addr: netip.MustParseAddr("172.30.0.2")},                                 // no MAC
		{Tap: m.Names.Tap("aaaaaaaa"), MAC: "02:00:00:00:00:01:02:03", Addr: netip.MustParseAddr("172.30.0.2")}, // not Ethernet
		{Tap: m.Names.Tap("aaaaaaaa"), MAC: MAC("aaaaaaaa"), Addr: netip.MustParseAddr("fd00::2")},              // IPv6
		{Tap: m.Names.Tap("aaaaaaaa"), MAC: MAC("aaaaaaaa")},                                                    // no address
	} {
		if err := m.Attach(context.Background(), bad.Tap, []Member{bad}); err == nil || !strings.Contains(err.Error(), "apply bridge table") {
			t.Errorf("attach %+v: err = %v, want a refused bridge table", bad, err)
		}
	}
}

// The port filter is in place before the TAP joins the bridge: no frame
// of the guest passes unchecked.
func TestPortFilterBeforeTap(t *testing.T) {
	m, f := newManager(t)
	a := member(m, "aaaaaaaa", "172.30.0.2", false)
	if err := m.Attach(context.Background(), a.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	filter := slices.Index(f.Calls, "apply bridge table banger_bg1a2b3c")
	tap := slices.IndexFunc(f.Calls, func(c string) bool { return strings.HasPrefix(c, "ensure tap ") })
	if filter < 0 || tap < 0 || filter > tap {
		t.Fatalf("calls %q: want the bridge table applied before the tap is ensured", f.Calls)
	}
}

func TestForwardingRestoredWithLastTapVM(t *testing.T) {
	ctx := context.Background()
	m, f := newManager(t)
	record := filepath.Join(m.StateDir, FileForwardRecord)
	a := member(m, "aaaaaaaa", "172.30.0.2", false)
	b := member(m, "bbbbbbbb", "172.30.0.3", false)
	if err := m.Attach(ctx, a.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); !on {
		t.Fatal("forwarding off with a tap VM")
	}
	if b, err := os.ReadFile(record); err != nil || string(b) != "0\n" {
		t.Fatalf("record = %q %v, want \"0\\n\"", b, err)
	}
	if err := m.Attach(ctx, b.Tap, []Member{a, b}); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(ctx, a.Tap, []Member{b}); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); !on {
		t.Fatal("forwarding switched off while a tap VM remains")
	}

	// The daemon dies with b alive; its successor finds b gone (deleted
	// while no daemon ran) and, reading the record, restores forwarding.
	next := &Manager{Host: f, Names: m.Names, Subnet: m.Subnet, StateDir: m.StateDir}
	if err := next.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); on {
		t.Error("forwarding left on after the last tap VM went")
	}
	if _, err := os.Stat(record); !os.IsNotExist(err) {
		t.Errorf("record survived the restore: %v", err)
	}
}

func TestForwardingFoundOnStaysOn(t *testing.T) {
	ctx := context.Background()
	m, f := newManager(t)
	_ = f.SetForwarding(ctx, true) // the host routes already
	a := member(m, "aaaaaaaa", "172.30.0.2", false)
	if err := m.Attach(ctx, a.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(ctx, a.Tap, nil); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); !on {
		t.Error("banger switched off forwarding it found on")
	}
	if _, err := os.Stat(filepath.Join(m.StateDir, FileForwardRecord)); !os.IsNotExist(err) {
		t.Errorf("a record exists for forwarding banger did not change: %v", err)
	}
}

func TestForwardingKeptForAnotherInstance(t *testing.T) {
	ctx := context.Background()
	m, f := newManager(t)
	a := member(m, "aaaaaaaa", "172.30.0.2", false)
	if err := m.Attach(ctx, a.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	f.AddForeign("bg9f9f9fbr", KindBridge) // another instance with tap VMs
	f.AddForeign("bgnothexbr", KindBridge) // not a banger name: no say
	if err := m.Detach(ctx, a.Tap, nil); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); !on {
		t.Fatal("forwarding switched off under another instance's tap VMs")
	}
	// Once that instance is gone, the next try (daemon shutdown) restores.
	if err := f.DeleteLink(ctx, "bg9f9f9fbr"); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreForwarding(ctx); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.Forwarding(ctx); on {
		t.Error("forwarding still on after the other instance went")
	}
}

func TestForwardingRecordNotBangers(t *testing.T) {
	m, _ := newManager(t)
	if err := os.WriteFile(filepath.Join(m.StateDir, FileForwardRecord), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreForwarding(context.Background()); err == nil || !strings.Contains(err.Error(), "remove it if banger did not") {
		t.Fatalf("err = %v", err)
	}
}

func TestIsInstanceBridge(t *testing.T) {
	for name, want := range map[string]bool{
		"bg1a2b3cbr": true, "bg9f9f9fbr": true, "bgnothexbr": false, "bg1a2b3ct": false,
		"docker0": false, "bg1a2b3cbrr": false, "xg1a2b3cbr": false,
	} {
		if got := isInstanceBridge(name); got != want {
			t.Errorf("isInstanceBridge(%q) = %v", name, got)
		}
	}
}

func TestPortFilterExprs(t *testing.T) {
	rules, err := portFilterRules(PortFilter{Ports: []Port{{Tap: "t0", MAC: "02:aa:bb:cc:dd:ee", Addr: netip.MustParseAddr("172.30.0.2")}}})
	if err != nil {
		t.Fatal(err)
	}
	// iifname (2) + ether saddr (2) + verdict, and so on.
	var sizes []int
	for _, r := range rules {
		sizes = append(sizes, len(r.Exprs))
	}
	if want := []int{5, 7, 5, 11, 3, 3}; !reflect.DeepEqual(sizes, want) {
		t.Errorf("expression counts %v, want %v", sizes, want)
	}
}
