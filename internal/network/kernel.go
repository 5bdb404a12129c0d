package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernel is the real Host: netlink for links and addresses, nf_tables
// over netlink for NAT. It acts in the calling process's network
// namespace and needs CAP_NET_ADMIN.
type Kernel struct{}

var _ Host = Kernel{}

// Links implements Host.
func (Kernel) Links(context.Context) ([]Link, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	byIndex := map[int]string{}
	for _, l := range ls {
		byIndex[l.Attrs().Index] = l.Attrs().Name
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		link := Link{Name: a.Name, Kind: l.Type(), Master: byIndex[a.MasterIndex], Up: a.Flags&unix.IFF_UP != 0}
		if a.MasterIndex != 0 {
			// A link dump without AF_BRIDGE carries no port flags.
			if pi, err := netlink.LinkGetProtinfo(l); err == nil {
				link.Isolated = pi.Isolated
			}
		}
		out = append(out, link)
	}
	return out, nil
}

func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	return l, err
}

// EnsureBridge implements Host.
func (Kernel) EnsureBridge(_ context.Context, name string, addr netip.Prefix) error {
	l, err := linkByName(name)
	if err != nil {
		return err
	}
	if l == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return err
		}
	} else if l.Type() != KindBridge {
		return fmt.Errorf("%s exists and is a %s, not a bridge", name, l.Type())
	}
	nladdr, err := netlink.ParseAddr(addr.String())
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(l, nladdr); err != nil {
		return fmt.Errorf("address %s: %w", addr, err)
	}
	// The bridge is banger's: an address from an older subnet goes.
	old, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, a := range old {
		if a.IPNet.String() != addr.String() {
			if err := netlink.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove old address %s: %w", a.IPNet, err)
			}
		}
	}
	return netlink.LinkSetUp(l)
}

// EnsureTap implements Host. The TAP is persistent (it outlives the file
// descriptor used to make it), so QEMU or Firecracker opens it by name
// and it survives VMM and daemon restarts. It joins the bridge as an
// isolated port, and goes up only after that.
func (Kernel) EnsureTap(_ context.Context, name, master string) error {
	br, err := netlink.LinkByName(master)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", master, err)
	}
	l, err := linkByName(name)
	if err != nil {
		return err
	}
	if l == nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Queues:    1,
			// Only the daemon's user and group (who run the VMM) may open it.
			Owner: uint32(os.Getuid()),
			Group: uint32(os.Getgid()),
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("add tap: %w", err)
		}
		// LinkAdd keeps the queue's fd open for a non-persistent TAP
		// only; close anything it handed back so the VMM can attach.
		for _, f := range tap.Fds {
			f.Close()
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return err
		}
	} else if l.Type() != KindTap {
		return fmt.Errorf("%s exists and is a %s, not a tap", name, l.Type())
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach to %s: %w", master, err)
		}
	}
	if err := netlink.LinkSetIsolated(l, true); err != nil {
		return fmt.Errorf("isolate bridge port: %w", err)
	}
	return netlink.LinkSetUp(l)
}

// DeleteLink implements Host.
func (Kernel) DeleteLink(_ context.Context, name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkDel(l)
}

// Tables implements Host.
func (Kernel) Tables(context.Context) ([]string, error) {
	return tablesOf(nftables.TableFamilyIPv4)
}

// BridgeTables implements Host.
func (Kernel) BridgeTables(context.Context) ([]string, error) {
	return tablesOf(nftables.TableFamilyBridge)
}

func tablesOf(family nftables.TableFamily) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTablesOfFamily(family)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out, nil
}

// ApplyNAT implements Host: add, delete and re-add the table in one
// batch, so the old rules are replaced atomically whether or not the
// table existed.
func (Kernel) ApplyNAT(_ context.Context, n NAT) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: n.Table, Family: nftables.TableFamilyIPv4}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: masqueradeExprs(n)})
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: bridgeToBridge(n.Bridge)})
	for _, a := range n.Isolated {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(fromGuest(n.Bridge, a), &expr.Verdict{Kind: expr.VerdictDrop})})
	}
	for _, a := range n.Isolated {
		exprs := append(fromGuest(n.Bridge, a),
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Verdict{Kind: expr.VerdictDrop})
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: exprs})
	}
	return c.Flush()
}

// bridgeToBridge is `iifname BRIDGE oifname BRIDGE drop`: a guest that
// routes to another guest through the host (its gateway) gets nowhere,
// whatever either one's egress.
func bridgeToBridge(bridge string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// fromGuest is `iifname BRIDGE ip saddr ADDR`.
func fromGuest(bridge string, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	}
}

// masqueradeExprs is `ip saddr SUBNET oifname != BRIDGE masquerade`.
func masqueradeExprs(n NAT) []expr.Any {
	sub := n.Subnet.Masked()
	mask := netipMask(sub.Bits())
	netAddr := sub.Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netAddr[:]},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.Bridge)},
		&expr.Masq{},
	}
}

func netipMask(bits int) []byte {
	m := make([]byte, 4)
	for i := range bits {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// ifname is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// DeleteTable implements Host.
func (Kernel) DeleteTable(_ context.Context, name string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyIPv4})
	return c.Flush()
}

// ApplyPortFilter implements Host, atomically like ApplyNAT. The chains
// hook in at -200, what nft calls the bridge family's filter priority.
func (Kernel) ApplyPortFilter(_ context.Context, p PortFilter) error {
	rules, err := portFilterRules(p)
	if err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: p.Table, Family: nftables.TableFamilyBridge}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	prio := nftables.ChainPriorityRef(-200)
	chains := map[string]*nftables.Chain{
		chainPrerouting: c.AddChain(&nftables.Chain{
			Name: chainPrerouting, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: prio, Policy: &accept,
		}),
		chainForward: c.AddChain(&nftables.Chain{
			Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: prio, Policy: &accept,
		}),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[r.Chain], Exprs: r.Exprs})
	}
	return c.Flush()
}

// DeleteBridgeTable implements Host.
func (Kernel) DeleteBridgeTable(_ context.Context, name string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyBridge})
	return c.Flush()
}

// ipForward is per network namespace, so it concerns only the namespace
// banger runs in.
const ipForward = "/proc/sys/net/ipv4/ip_forward"

// Forwarding implements Host.
func (Kernel) Forwarding(context.Context) (bool, error) {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

// SetForwarding implements Host.
func (Kernel) SetForwarding(_ context.Context, on bool) error {
	v := "0\n"
	if on {
		v = "1\n"
	}
	return os.WriteFile(ipForward, []byte(v), 0o644)
}
