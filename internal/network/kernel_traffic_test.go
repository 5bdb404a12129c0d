package network

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNS runs fn on a thread of its own moved into ns; the thread is never
// handed back (it dies with the goroutine), so no other code runs there.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// serve accepts and closes TCP connections on addr in ns until the test
// ends.
func serve(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	var ln net.Listener
	if err := inNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// connects says whether a TCP connection from ns (from local, if set)
// to addr opens.
func connects(ns netns.NsHandle, local, addr string) bool {
	return inNS(ns, func() error {
		d := net.Dialer{Timeout: 1500 * time.Millisecond}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}) == nil
}

// guest is a network namespace standing in for a VM: a veth pair whose
// host end has the TAP's name and is a port of the bridge, like the TAP
// of a real VM (a TAP without a VMM has no carrier, so it passes no
// traffic).
type guest struct {
	ns   netns.NsHandle
	h    *netlink.Handle
	port Port
}

func newGuest(t *testing.T, host netns.NsHandle, bridge string, port Port) *guest {
	t.Helper()
	ns, err := netns.New() // moves this thread; go back below
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	mac, _ := net.ParseMAC(port.MAC)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port.Tap}, PeerName: "eth0", PeerHardwareAddr: mac, PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", port.Tap, err)
	}
	hostEnd, err := netlink.LinkByName(port.Tap)
	if err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	// As Kernel.EnsureTap does for a TAP.
	for _, step := range []error{netlink.LinkSetMaster(hostEnd, br), netlink.LinkSetIsolated(hostEnd, true), netlink.LinkSetUp(hostEnd)} {
		if step != nil {
			t.Fatal(step)
		}
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	g := &guest{ns: ns, h: h, port: port}
	lo, _ := h.LinkByName("lo")
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(port.Addr.String() + "/24")
	for _, step := range []error{h.LinkSetUp(lo), h.AddrAdd(eth, addr), h.LinkSetUp(eth)} {
		if step != nil {
			t.Fatal(step)
		}
	}
	g.must(t, h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("172.30.0.1")}))
	// Ignore the host's ICMP redirects ("go direct"), so a routed
	// attempt stays routed and tests the forward rule, not isolation.
	g.must(t, inNS(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/accept_redirects", []byte("0\n"), 0o644)
	}))
	return g
}

// flushNeigh forgets the guest's IPv4 neighbours, so its next packet to
// the host starts with an ARP request (from its current MAC).
func (g *guest) flushNeigh(t *testing.T) {
	t.Helper()
	ns, err := g.h.NeighList(g.eth(t).Attrs().Index, netlink.FAMILY_V4)
	g.must(t, err)
	for _, n := range ns {
		_ = g.h.NeighDel(&n)
	}
}

// sendARP sends from the guest an ARP request "who has tpa, tell spa at
// sha" as a raw frame from sha, the way a hostile guest claims an address.
func (g *guest) sendARP(t *testing.T, sha net.HardwareAddr, spa, tpa netip.Addr) {
	t.Helper()
	frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, sha...)
	frame = append(frame, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01)
	frame = append(frame, sha...)
	s4, t4 := spa.As4(), tpa.As4()
	frame = append(frame, s4[:]...)
	frame = append(frame, make([]byte, 6)...)
	frame = append(frame, t4[:]...)
	idx := g.eth(t).Attrs().Index
	g.must(t, inNS(g.ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: idx, Protocol: 0x0608, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}})
	}))
}

// hostNeigh is the MAC the host's bridge has for addr ("" if none).
func hostNeigh(t *testing.T, bridge string, addr netip.Addr) string {
	t.Helper()
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP.Equal(net.IP(addr.AsSlice())) {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

func (g *guest) must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("in guest %s: %v", g.port.Tap, err)
	}
}

func (g *guest) eth(t *testing.T) netlink.Link {
	t.Helper()
	l, err := g.h.LinkByName("eth0")
	g.must(t, err)
	return l
}

// addAddr adds (on) or removes an address of the guest's NIC.
func (g *guest) addAddr(t *testing.T, cidr string, on bool) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	g.must(t, err)
	if !on {
		g.must(t, g.h.AddrDel(g.eth(t), a))
		return
	}
	a.Flags |= unix.IFA_F_NODAD // usable at once, no duplicate detection wait
	g.must(t, g.h.AddrAdd(g.eth(t), a))
}

func (g *guest) setMAC(t *testing.T, mac string) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	g.must(t, g.h.LinkSetHardwareAddr(g.eth(t), hw))
}

func (g *guest) routeVia(t *testing.T, dst string, add bool) {
	t.Helper()
	_, n, _ := net.ParseCIDR(dst)
	r := &netlink.Route{LinkIndex: g.eth(t).Attrs().Index, Dst: n, Gw: net.ParseIP("172.30.0.1")}
	if add {
		g.must(t, g.h.RouteAdd(r))
	} else {
		g.must(t, g.h.RouteDel(r))
	}
}

// TestKernelContainment sends real traffic through the rules banger
// applies: a guest that forges its MAC or IPv4 address, speaks IPv6 or
// talks to another guest (directly or routed through the host) gets
// nowhere, and each attempt works once the rule against it is gone, so
// the rule is what stops it.
func TestKernelContainment(t *testing.T) {
	inNewNetns(t, func() {
		ctx := context.Background()
		k := Kernel{}
		m := &Manager{Host: k, Names: Names{Prefix: "bgtest02"}, Subnet: netip.MustParsePrefix("172.30.0.0/24"), StateDir: t.TempDir()}
		a := Member{Tap: m.Names.Tap("aaaaaaaa"), MAC: MAC("aaaaaaaa"), Addr: netip.MustParseAddr("172.30.0.2"), Isolated: true}
		b := Member{Tap: m.Names.Tap("bbbbbbbb"), MAC: MAC("bbbbbbbb"), Addr: netip.MustParseAddr("172.30.0.3")}
		c := Member{Tap: m.Names.Tap("cccccccc"), MAC: MAC("cccccccc"), Addr: netip.MustParseAddr("172.30.0.4")}
		members := []Member{a, b, c}
		// Everything Attach makes except the TAPs, which veths replace.
		if err := k.EnsureBridge(ctx, m.Names.Bridge(), Gateway(m.Subnet)); err != nil {
			t.Error(err)
			return
		}
		if err := m.enableForwarding(ctx); err != nil {
			t.Error(err)
			return
		}
		apply := func(pf PortFilter, n NAT) {
			if err := k.ApplyPortFilter(ctx, pf); err != nil {
				t.Fatalf("port filter: %v", err)
			}
			if err := k.ApplyNAT(ctx, n); err != nil {
				t.Fatalf("nat: %v", err)
			}
		}
		apply(m.portFilter(members), m.nat(members))
		host, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer host.Close()
		ga := newGuest(t, host, m.Names.Bridge(), m.portFilter([]Member{a}).Ports[0])
		gb := newGuest(t, host, m.Names.Bridge(), m.portFilter([]Member{b}).Ports[0])
		gc := newGuest(t, host, m.Names.Bridge(), m.portFilter([]Member{c}).Ports[0])
		br, _ := netlink.LinkByName(m.Names.Bridge())
		ula, _ := netlink.ParseAddr("fd00:b::1/64")
		ula.Flags |= unix.IFA_F_NODAD
		if err := netlink.AddrAdd(br, ula); err != nil {
			t.Error(err)
			return
		}
		serve(t, host, "172.30.0.1:8080")
		serve(t, host, "[fd00:b::1]:8080")
		serve(t, gb.ns, "172.30.0.3:22")
		serve(t, ga.ns, "172.30.0.2:22")
		serve(t, gc.ns, "172.30.0.4:22")

		// Controls: guests reach the host as themselves (b has egress
		// all; a, egress none, is reached by the host).
		if !connects(gb.ns, "", "172.30.0.1:8080") {
			t.Error("control: guest b cannot reach the host")
		}
		if !connects(host, "", "172.30.0.2:22") {
			t.Error("control: the host cannot reach guest a")
		}
		if connects(ga.ns, "", "172.30.0.1:8080") {
			t.Error("egress none guest a reached the host")
		}

		type attempt struct {
			name  string
			from  *guest
			local string
			to    string
			setup func(on bool)
			// check replaces the connection attempt: it says whether
			// the attack worked.
			check func() bool
		}
		attempts := []attempt{
			{name: "a with another address -> host", from: ga, local: "172.30.0.9", to: "172.30.0.1:8080",
				setup: func(on bool) { ga.addAddr(t, "172.30.0.9/24", on) }},
			{name: "b with another MAC -> host", from: gb, to: "172.30.0.1:8080",
				setup: func(on bool) {
					if on {
						gb.setMAC(t, "02:66:66:66:66:66")
					} else {
						gb.setMAC(t, b.MAC)
					}
					gb.flushNeigh(t)
				}},
			{name: "b over IPv6 -> host", from: gb, to: "[fd00:b::1]:8080",
				setup: func(on bool) { gb.addAddr(t, "fd00:b::3/64", on) }},
			{name: "b -> a on the bridge", from: gb, to: "172.30.0.2:22"},
			{name: "b -> c routed through the host (both egress all)", from: gb, to: "172.30.0.4:22",
				setup: func(on bool) {
					gb.routeVia(t, "172.30.0.4/32", on)
					gc.routeVia(t, "172.30.0.3/32", on)
				}},
			{name: "a claims b's address over ARP (host's neighbour entry for b)",
				setup: func(on bool) {
					if !on { // the host forgets what a made it believe
						if br, err := netlink.LinkByName(m.Names.Bridge()); err == nil {
							_ = netlink.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, IP: net.IP(b.Addr.AsSlice())})
						}
					}
				},
				check: func() bool {
					mac, _ := net.ParseMAC(a.MAC)
					ga.sendARP(t, mac, b.Addr, netip.MustParseAddr("172.30.0.1"))
					time.Sleep(300 * time.Millisecond)
					return hostNeigh(t, m.Names.Bridge(), b.Addr) == a.MAC
				}},
		}
		try := func(at attempt) bool {
			if at.check != nil {
				return at.check()
			}
			return connects(at.from.ns, at.local, at.to)
		}
		for _, at := range attempts {
			if at.setup != nil {
				at.setup(true)
			}
			if try(at) {
				t.Errorf("%s: worked", at.name)
			}
			if at.setup != nil {
				at.setup(false)
			}
		}

		// The same attempts with the protections off must work, or the
		// checks above prove nothing: no bridge table, ports not
		// isolated, a NAT table without the egress none and
		// bridge-to-bridge rules.
		apply(PortFilter{Table: m.Names.Table()}, NAT{Table: m.Names.Table(), Subnet: m.Subnet, Bridge: "none"})
		for _, g := range []*guest{ga, gb, gc} {
			l, _ := netlink.LinkByName(g.port.Tap)
			if err := netlink.LinkSetIsolated(l, false); err != nil {
				t.Fatal(err)
			}
			g.flushNeigh(t) // failed lookups of the first round
		}
		for _, at := range attempts {
			if at.setup != nil {
				at.setup(true)
			}
			// Neighbour entries (the host's, the guests') and the
			// bridge's FDB may still point at a MAC an earlier attempt
			// used; flush and give each control a few tries.
			ok := false
			for i := 0; i < 4 && !ok; i++ {
				if i > 0 {
					for _, g := range []*guest{ga, gb, gc} {
						g.flushNeigh(t)
					}
					time.Sleep(500 * time.Millisecond)
				}
				ok = try(at)
			}
			if !ok {
				t.Errorf("control %s: blocked even without the rules", at.name)
			}
			if at.setup != nil {
				at.setup(false)
			}
		}
	})
}
