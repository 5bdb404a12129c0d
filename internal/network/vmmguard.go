package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// LocalGuard keeps VMM processes off the host's own addresses. QEMU's
// user-mode network stack (slirp) turns a guest's connection to 10.0.2.2,
// or to any host address, into a connection from the QEMU process to
// that address on the host: with egress all, a guest would reach every
// service listening on the host's loopback, other VMs' forwards
// included. With every VMM running under a uid of a known range, one
// output rule stops that: a new connection from a socket of such a uid
// to a local address (fib daddr type local: 127.0.0.0/8, ::1 and every
// address of the host) is rejected. Replies on the VM's own forwards are
// not new connections and pass; DNS (port 53) passes, since slirp's
// resolver at 10.0.2.3 forwards to the host's nameserver, often a local
// one. The tap subnet is closed the same way, so a user-mode guest
// cannot reach tap-mode VMs through the host either.
type LocalGuard struct {
	// Table is the inet table holding the rule (Names.GuardTable).
	Table string
	// First and Last bound the VMM uid range.
	First, Last uint32
	// Blocked are further IPv4 networks the VMMs may not open
	// connections to: the tap subnet, where other VMs live (slirp would
	// otherwise carry a user-mode guest to them through the host).
	Blocked []netip.Prefix
}

// Guard installs and removes LocalGuards. Kernel implements it.
type Guard interface {
	// ApplyLocalGuard replaces table g.Table with g's rules.
	ApplyLocalGuard(ctx context.Context, g LocalGuard) error
	// DeleteLocalGuard removes the table; a missing one is not an error.
	DeleteLocalGuard(ctx context.Context, table string) error
}

var _ Guard = Kernel{}

// GuardTable is the instance's inet table of VMM output rules.
func (n Names) GuardTable() string { return "banger_" + n.Prefix + "_vmm" }

// dnsPort passes the guard (see LocalGuard).
const dnsPort = 53

// guardRules are the output chain's rules for g, in order: DNS over UDP
// and TCP is accepted, other TCP gets a reset (the guest sees a refused
// connection at once), anything else an ICMP admin-prohibited.
func guardRules(g LocalGuard) [][]expr.Any {
	match := func(l4 byte, dport int) []expr.Any {
		e := []expr.Any{
			// meta skuid FIRST-LAST: skuid is host-endian, and ranges
			// compare bytes, so it is turned big-endian first (as nft
			// itself does).
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
			&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: binaryutil.BigEndian.PutUint32(g.First), ToData: binaryutil.BigEndian.PutUint32(g.Last)},
			// ct state new
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			// fib daddr type local
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}
		if l4 != 0 {
			e = append(e,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}})
		}
		if dport != 0 {
			e = append(e,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(dport))})
		}
		return e
	}
	rules := [][]expr.Any{
		append(match(unix.IPPROTO_UDP, dnsPort), &expr.Verdict{Kind: expr.VerdictAccept}),
		append(match(unix.IPPROTO_TCP, dnsPort), &expr.Verdict{Kind: expr.VerdictAccept}),
		append(match(unix.IPPROTO_TCP, 0), &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}),
		append(match(0, 0), &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}),
	}
	for _, p := range g.Blocked {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		a := p.Addr().As4()
		// meta skuid RANGE ct state new meta nfproto ipv4 ip daddr P reject
		e := append(match(0, 0)[:6:6],
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: netipMask(p.Bits()), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
		)
		rules = append(rules,
			append(append(e[:len(e):len(e)],
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}}),
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}),
			append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}),
		)
	}
	return rules
}

// ApplyLocalGuard implements Guard: the table is added, deleted and
// re-added in one batch, so the rules are replaced atomically.
func (Kernel) ApplyLocalGuard(_ context.Context, g LocalGuard) error {
	if g.Table == "" || g.First == 0 || g.First > g.Last {
		return fmt.Errorf("apply local guard: bad table %q or uid range %d-%d", g.Table, g.First, g.Last)
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: g.Table, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	out := c.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for _, r := range guardRules(g) {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply local guard %s: %w", g.Table, err)
	}
	return nil
}

// DeleteLocalGuard implements Guard.
func (Kernel) DeleteLocalGuard(_ context.Context, table string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list inet tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == table {
			c.DelTable(t)
			if err := c.Flush(); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("delete local guard %s: %w", table, err)
			}
			return nil
		}
	}
	return nil
}
