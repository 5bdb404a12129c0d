package network

import (
	"fmt"
	"net"

	"github.com/google/nftables/expr"
)

// The bridge-family table's chains. prerouting sees every frame a port
// sends, whether to the host or to another port; forward sees only the
// frames the bridge would pass from one port to another.
const (
	chainPrerouting = "prerouting"
	chainForward    = "forward"
)

// Ethernet types and the fixed start of an IPv4-over-Ethernet ARP header
// (htype 1, ptype 0x0800, hlen 6, plen 4): ARP with other sizes would
// move the sender fields, so it is not accepted at all.
var (
	etherTypeIPv4 = []byte{0x08, 0x00}
	etherTypeARP  = []byte{0x08, 0x06}
	arpEthIPv4    = []byte{0x00, 0x01, 0x08, 0x00, 6, 4}
)

// nftRule is one rule both as nft would print it (what the fake stores
// and tests compare) and as the expressions the kernel gets, built side
// by side so the two cannot drift apart.
type nftRule struct {
	Chain string
	Text  string
	Exprs []expr.Any
}

// portFilterRules renders p: for each port, in the prerouting chain,
//
//	iifname TAP ether saddr != MAC drop
//	iifname TAP ether type ip ip saddr != ADDR drop
//	iifname TAP ether type ip accept
//	iifname TAP ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether MAC arp saddr ip ADDR accept
//	iifname TAP drop
//
// (so IPv6, VLAN tags, spoofed ARP and every other protocol end at the
// last rule), and in the forward chain `iifname TAP drop`.
func portFilterRules(p PortFilter) ([]nftRule, error) {
	var out []nftRule
	for _, port := range p.Ports {
		if err := checkName(port.Tap); err != nil {
			return nil, err
		}
		mac, err := net.ParseMAC(port.MAC)
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("port %s: MAC %q is not an Ethernet address", port.Tap, port.MAC)
		}
		if !port.Addr.Is4() {
			return nil, fmt.Errorf("port %s: address %v is not IPv4", port.Tap, port.Addr)
		}
		addr := port.Addr.As4()
		iif := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(port.Tap)},
		}
		on := fmt.Sprintf("iifname %q ", port.Tap)
		rule := func(chain, text string, parts ...[]expr.Any) nftRule {
			exprs := append([]expr.Any{}, iif...)
			for _, p := range parts {
				exprs = append(exprs, p...)
			}
			return nftRule{Chain: chain, Text: chain + ": " + on + text, Exprs: exprs}
		}
		out = append(out,
			rule(chainPrerouting, fmt.Sprintf("ether saddr != %s drop", mac),
				linkField(6, 6, expr.CmpOpNeq, mac), drop()),
			rule(chainPrerouting, fmt.Sprintf("ether type ip ip saddr != %s drop", port.Addr),
				linkField(12, 2, expr.CmpOpEq, etherTypeIPv4), netField(12, 4, expr.CmpOpNeq, addr[:]), drop()),
			rule(chainPrerouting, "ether type ip accept",
				linkField(12, 2, expr.CmpOpEq, etherTypeIPv4), accept()),
			rule(chainPrerouting, fmt.Sprintf("ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether %s arp saddr ip %s accept", mac, port.Addr),
				linkField(12, 2, expr.CmpOpEq, etherTypeARP), netField(0, 6, expr.CmpOpEq, arpEthIPv4),
				netField(8, 6, expr.CmpOpEq, mac), netField(14, 4, expr.CmpOpEq, addr[:]), accept()),
			rule(chainPrerouting, "drop", drop()),
			rule(chainForward, "drop", drop()),
		)
	}
	return out, nil
}

func linkField(off, n uint32, op expr.CmpOp, want []byte) []expr.Any {
	return field(expr.PayloadBaseLLHeader, off, n, op, want)
}

func netField(off, n uint32, op expr.CmpOp, want []byte) []expr.Any {
	return field(expr.PayloadBaseNetworkHeader, off, n, op, want)
}

func field(base expr.PayloadBase, off, n uint32, op expr.CmpOp, want []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n},
		&expr.Cmp{Op: op, Register: 1, Data: append([]byte{}, want...)},
	}
}

func drop() []expr.Any   { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }
func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// renderPortFilter is the fake's view of p: its rules as text.
func renderPortFilter(p PortFilter) ([]string, error) {
	rules, err := portFilterRules(p)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, r.Text)
	}
	return out, nil
}
