package agent

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/agentapi"
)

// EgressTable is the guest's nftables table (family inet) that sends
// every outbound connection to the agent.
const EgressTable = "banger_egress"

// egressBypassMark is the socket mark (SO_MARK) of a connection the
// redirect leaves alone. The agent makes no connection over the NIC
// today; a socket it ever opens there must carry this mark, or it would
// be redirected to itself.
const egressBypassMark = 0x62616e67 // "bang"

// egressRule is one rule both as nft would print it (what tests compare)
// and as the expressions the kernel gets, built side by side so the two
// cannot drift apart.
type egressRule struct {
	Text  string
	Exprs []expr.Any
}

// egressRules is the nat output chain of EgressTable, in order:
//
//	meta mark 0x62616e67 return
//	meta l4proto udp udp dport 53 redirect to :15053
//	meta l4proto tcp tcp dport 53 redirect to :15053
//	oifname "lo" return
//	meta l4proto tcp redirect to :15001
//
// In the output hook a redirect goes to 127.0.0.1 (IPv4) or ::1 (IPv6),
// where the agent listens. DNS is redirected whatever its destination,
// loopback included: with no nameserver in resolv.conf glibc asks
// 127.0.0.1, and a local stub resolver gains nothing over the host. Other
// loopback traffic (including to the guest's own addresses, which routes
// over lo) stays local. IPv6 is redirected like
// IPv4: the inet family covers both. Other UDP and ICMP are not touched:
// the NIC has no route out, so they simply get no answer.
func egressRules() []egressRule {
	loName := make([]byte, unix.IFNAMSIZ)
	copy(loName, "lo")
	mark := make([]byte, 4)
	binary.NativeEndian.PutUint32(mark, egressBypassMark)
	l4 := func(proto byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}
	}
	dport := func(port uint16) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		}
	}
	redirect := func(port uint16) []expr.Any {
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
			&expr.Redir{RegisterProtoMin: 1},
		}
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	ret := []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	return []egressRule{
		{fmt.Sprintf("meta mark %#x return", egressBypassMark), cat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		}, ret)},
		{fmt.Sprintf("meta l4proto udp udp dport 53 redirect to :%d", agentapi.EgressDNSPort),
			cat(l4(unix.IPPROTO_UDP), dport(53), redirect(agentapi.EgressDNSPort))},
		{fmt.Sprintf("meta l4proto tcp tcp dport 53 redirect to :%d", agentapi.EgressDNSPort),
			cat(l4(unix.IPPROTO_TCP), dport(53), redirect(agentapi.EgressDNSPort))},
		{`oifname "lo" return`, cat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: loName},
		}, ret)},
		{fmt.Sprintf("meta l4proto tcp redirect to :%d", agentapi.EgressTCPPort),
			cat(l4(unix.IPPROTO_TCP), redirect(agentapi.EgressTCPPort))},
	}
}

// applyEgressRules replaces EgressTable with egressRules in one batch (the
// table is added, deleted and re-added), so that reapplying at every
// agent start is atomic and idempotent.
func applyEgressRules() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Name: EgressTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	out := c.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
	})
	for _, r := range egressRules() {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: r.Exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program egress redirect (table inet %s): %w", EgressTable, err)
	}
	return nil
}
