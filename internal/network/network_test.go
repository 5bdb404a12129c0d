package network

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const prefix = "bg1a2b3c"

func newManager(t *testing.T) (*Manager, *Fake) {
	t.Helper()
	f := NewFake()
	return &Manager{Host: f, Names: Names{Prefix: prefix}, Subnet: netip.MustParsePrefix("172.30.0.0/24")}, f
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
	a := Member{Tap: m.Names.Tap("aaaaaaaa"), Addr: netip.MustParseAddr("172.30.0.2")}
	b := Member{Tap: m.Names.Tap("bbbbbbbb"), Addr: netip.MustParseAddr("172.30.0.3"), Isolated: true}
	if err := m.Attach(ctx, a.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(ctx, b.Tap, []Member{a, b}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip_forward=1",
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link bg1a2b3ctaaaaaa tuntap master=bg1a2b3cbr up",
		"link bg1a2b3ctbbbbbb tuntap master=bg1a2b3cbr up",
		`table banger_bg1a2b3c: postrouting: ip saddr 172.30.0.0/24 oifname != "bg1a2b3cbr" masquerade; ` +
			`forward: iifname "bg1a2b3cbr" ip saddr 172.30.0.3 drop; ` +
			`input: iifname "bg1a2b3cbr" ip saddr 172.30.0.3 ct state != established,related drop`,
	}
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state after two attaches:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Detaching the isolated VM drops its rule and its TAP only.
	if err := m.Detach(ctx, b.Tap, []Member{a}); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"ip_forward=1",
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link bg1a2b3ctaaaaaa tuntap master=bg1a2b3cbr up",
		`table banger_bg1a2b3c: postrouting: ip saddr 172.30.0.0/24 oifname != "bg1a2b3cbr" masquerade`,
	}
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state after detach:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The last one out takes the bridge and the table with it.
	if err := m.Detach(ctx, a.Tap, nil); err != nil {
		t.Fatal(err)
	}
	if got := f.State(); !reflect.DeepEqual(got, []string{"ip_forward=1"}) {
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
	live := Member{Tap: m.Names.Tap("11111111"), Addr: netip.MustParseAddr("172.30.0.2")}
	orphan := m.Names.Tap("22222222")
	both := []Member{live, {Tap: orphan, Addr: netip.MustParseAddr("172.30.0.3"), Isolated: true}}
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

	if err := m.Reconcile(ctx, []Member{live}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip_forward=1",
		"link bg1a2b3cbr bridge addr=172.30.0.1/24 up",
		"link bg1a2b3ctaaaaaa tuntap master=bg1a2b3cbr up",
		"link bg9f9f9fbr bridge up",
		"link bg9f9f9ft333333 tuntap up",
		"link docker0 bridge up",
		"link tap0 tuntap up",
		`table banger_bg1a2b3c: postrouting: ip saddr 172.30.0.0/24 oifname != "bg1a2b3cbr" masquerade`,
		"table banger_bg9f9f9f: foreign",
		"table filter: foreign",
	}
	want[2] = "link " + live.Tap + " tuntap master=bg1a2b3cbr up"
	if got := f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reconcile:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// With no leases left, everything of this instance goes and nothing else.
	if err := m.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want = []string{
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
	mb := Member{Tap: m.Names.Tap("cafecafe")}
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
		"link " + mb.Tap + " tuntap master=bg1a2b3cbr up",
		"ip saddr 172.30.0.0/24",
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
