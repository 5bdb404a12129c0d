package network

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on a thread moved into a fresh network namespace,
// which disappears with the thread, so nothing here reaches the host's
// network. It needs root.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the kernel host test needs root (it works in a private network namespace)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread ends with this goroutine, and the
		// namespace with it.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

func TestKernelHost(t *testing.T) {
	inNewNetns(t, func() {
		ctx := context.Background()
		k := Kernel{}
		m := &Manager{Host: k, Names: Names{Prefix: "bgtest01"}, Subnet: netip.MustParsePrefix("172.30.0.0/24"), StateDir: t.TempDir()}
		a := Member{Tap: m.Names.Tap("aaaaaaaa"), MAC: MAC("aaaaaaaa"), Addr: netip.MustParseAddr("172.30.0.2"), Isolated: true}
		if on, err := k.Forwarding(ctx); err != nil || on {
			t.Errorf("a fresh namespace has forwarding %v (%v); want off", on, err)
			return
		}
		// Foreign objects that must survive.
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "userbr0"}}); err != nil {
			t.Errorf("add foreign bridge: %v", err)
			return
		}
		if err := k.ApplyNAT(ctx, NAT{Table: "user_table", Subnet: netip.MustParsePrefix("10.0.0.0/8"), Bridge: "userbr0"}); err != nil {
			t.Errorf("foreign table: %v", err)
			return
		}
		if err := k.ApplyPortFilter(ctx, PortFilter{Table: "user_table"}); err != nil {
			t.Errorf("foreign bridge table: %v", err)
			return
		}
		// An address of an older subnet on the bridge is replaced.
		old := *m
		old.Subnet = netip.MustParsePrefix("10.77.0.0/24")
		if err := old.Attach(ctx, a.Tap, []Member{a}); err != nil {
			t.Errorf("attach: %v", err)
			return
		}
		for range 2 { // idempotent
			if err := m.Attach(ctx, a.Tap, []Member{a}); err != nil {
				t.Errorf("attach: %v", err)
				return
			}
		}
		links, err := k.Links(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		i := slices.IndexFunc(links, func(l Link) bool { return l.Name == a.Tap })
		if i < 0 || links[i].Kind != KindTap || links[i].Master != m.Names.Bridge() || !links[i].Up || !links[i].Isolated {
			t.Errorf("tap after attach: %+v", links)
		}
		br, err := netlink.LinkByName(m.Names.Bridge())
		if err != nil {
			t.Error(err)
			return
		}
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "172.30.0.1/24" {
			t.Errorf("bridge addresses: %v", addrs)
		}
		tables, err := k.Tables(ctx)
		if err != nil || !slices.Contains(tables, m.Names.Table()) {
			t.Errorf("tables %v %v", tables, err)
		}
		if bt, err := k.BridgeTables(ctx); err != nil || !slices.Contains(bt, m.Names.Table()) {
			t.Errorf("bridge tables %v %v", bt, err)
		}
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(b) != "1\n" {
			t.Errorf("ip_forward = %q", b)
		}
		// An orphan of this instance goes; foreign objects stay.
		orphan := m.Names.Tap("bbbbbbbb")
		if err := k.EnsureTap(ctx, orphan, m.Names.Bridge()); err != nil {
			t.Error(err)
			return
		}
		if err := m.Reconcile(ctx, []Member{a}); err != nil {
			t.Errorf("reconcile: %v", err)
		}
		if err := m.Detach(ctx, a.Tap, nil); err != nil {
			t.Errorf("detach: %v", err)
		}
		links, _ = k.Links(ctx)
		tables, _ = k.Tables(ctx)
		var names []string
		for _, l := range links {
			names = append(names, l.Name)
		}
		for _, gone := range []string{a.Tap, orphan, m.Names.Bridge()} {
			if slices.Contains(names, gone) {
				t.Errorf("%s left behind: %v", gone, names)
			}
		}
		if slices.Contains(tables, m.Names.Table()) || !slices.Contains(tables, "user_table") || !slices.Contains(names, "userbr0") {
			t.Errorf("after detach: links %v tables %v", names, tables)
		}
		if bt, _ := k.BridgeTables(ctx); slices.Contains(bt, m.Names.Table()) || !slices.Contains(bt, "user_table") {
			t.Errorf("after detach: bridge tables %v", bt)
		}
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(b) != "0\n" {
			t.Errorf("ip_forward after the last detach = %q, want 0 as found", b)
		}
	})
}
