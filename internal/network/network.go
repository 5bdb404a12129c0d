// Package network gives tap-mode VMs their place on the host: one bridge
// per banger instance, one TAP per VM, and NAT for outbound traffic. Every
// kernel effect goes through Host, so the plan logic here (what to create,
// what to keep, what is an orphan) is tested against a stateful fake; the
// real Host talks netlink and nftables directly, never `ip` or `nft`.
//
// banger owns only what it created: every name carries the instance
// prefix (paths.Layout.InstancePrefix), and reconcile removes only names
// of that shape that no lease accounts for.
package network

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// IFNameMax is the longest interface name Linux accepts (IFNAMSIZ is 16
// bytes including the terminating NUL).
const IFNameMax = 15

// tapIDLen is how many characters of the VM id a TAP name carries: the
// 8-character instance prefix, "t" and 6 id characters make 15.
const tapIDLen = 6

// Link kinds as the kernel reports them.
const (
	KindBridge = "bridge"
	KindTap    = "tuntap"
)

// Link is one network interface as Host sees it.
type Link struct {
	Name   string
	Kind   string // KindBridge, KindTap or whatever else the kernel says
	Master string // the bridge it is attached to, if any
	Up     bool
	// Isolated is the bridge port flag (IFLA_BRPORT_ISOLATED): the
	// bridge forwards nothing between two isolated ports.
	Isolated bool
}

// NAT is the whole nftables table of one banger instance, rendered from
// the desired state and applied in one atomic batch.
type NAT struct {
	Table  string
	Subnet netip.Prefix
	Bridge string
	// Isolated are the guest addresses of VMs created with egress none:
	// nothing they send is forwarded, and the host accepts from them only
	// replies to connections it opened (ssh, opencode). Guests are matched
	// by source address because routed traffic from a bridge port enters
	// IP filtering with the bridge, not the TAP, as its input interface;
	// the bridge filter (PortFilter) is what makes that address
	// trustworthy. Whatever the egress, nothing is routed from the
	// bridge back into it, so one guest never reaches another through the
	// host either.
	Isolated []netip.Addr
}

// Port is one TAP pinned to its guest: frames entering the bridge from
// Tap must carry MAC as source, IPv4 packets Addr as source, and ARP both
// as sender; IPv6 and every other protocol are dropped.
type Port struct {
	Tap  string
	MAC  string // 02:xx:xx:xx:xx:xx, as MAC renders it
	Addr netip.Addr
}

// PortFilter is the bridge-family nftables table of one banger instance:
// anti-spoofing for each port, and no frames bridged from one port to
// another (the ports are isolated too: VM-to-VM isolation does not rest
// on one mechanism). Rewritten atomically, like NAT.
type PortFilter struct {
	Table string
	Ports []Port
}

// Host is every kernel effect tap networking needs.
type Host interface {
	Links(ctx context.Context) ([]Link, error)
	// EnsureBridge creates the bridge if missing, gives it addr (the
	// subnet's first host address) and sets it up. Idempotent.
	EnsureBridge(ctx context.Context, name string, addr netip.Prefix) error
	// EnsureTap creates a persistent TAP if missing, attaches it to
	// master and sets it up. Idempotent.
	EnsureTap(ctx context.Context, name, master string) error
	DeleteLink(ctx context.Context, name string) error
	// Tables lists the names of the IPv4 nftables tables.
	Tables(ctx context.Context) ([]string, error)
	// ApplyNAT replaces table n.Table with the rules n describes.
	ApplyNAT(ctx context.Context, n NAT) error
	DeleteTable(ctx context.Context, name string) error
	// BridgeTables lists the names of the bridge-family nftables tables.
	BridgeTables(ctx context.Context) ([]string, error)
	// ApplyPortFilter replaces bridge table p.Table with p's rules.
	ApplyPortFilter(ctx context.Context, p PortFilter) error
	DeleteBridgeTable(ctx context.Context, name string) error
	// Forwarding reports net.ipv4.ip_forward; SetForwarding sets it.
	Forwarding(ctx context.Context) (bool, error)
	SetForwarding(ctx context.Context, on bool) error
}

// Names derives every host object name of one banger instance.
type Names struct{ Prefix string }

// Bridge is the instance's bridge.
func (n Names) Bridge() string { return n.Prefix + "br" }

// Table is the instance's nftables table (IPv4 family), and also its
// bridge-family table: tables of different families are distinct.
func (n Names) Table() string { return "banger_" + n.Prefix }

// isInstanceBridge says whether name has the shape of any banger
// instance's bridge: "bg", 6 hex digits (paths.Layout.InstancePrefix),
// "br".
func isInstanceBridge(name string) bool {
	if len(name) != 10 || !strings.HasPrefix(name, "bg") || !strings.HasSuffix(name, "br") {
		return false
	}
	return strings.Trim(name[2:8], "0123456789abcdef") == ""
}

// Tap is the TAP device of VM vmID.
func (n Names) Tap(vmID string) string {
	id := vmID
	if len(id) > tapIDLen {
		id = id[:tapIDLen]
	}
	return n.Prefix + "t" + id
}

// IsTap says whether name has the shape of this instance's TAP names.
func (n Names) IsTap(name string) bool {
	return strings.HasPrefix(name, n.Prefix+"t") && len(name) > len(n.Prefix)+1
}

// Check fails when a derived name cannot be an interface name.
func (n Names) Check() error {
	for _, name := range []string{n.Bridge(), n.Tap(strings.Repeat("f", tapIDLen))} {
		if len(name) > IFNameMax {
			return fmt.Errorf("interface name %q is longer than %d bytes", name, IFNameMax)
		}
	}
	return nil
}

// MAC is the fixed guest NIC address of VM vmID: locally administered
// (0x02 bit set), unicast, and the same on every boot.
func MAC(vmID string) string {
	sum := sha256.Sum256([]byte("banger-mac:" + vmID))
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", sum[0], sum[1], sum[2], sum[3], sum[4])
}

// Gateway is the bridge's address in subnet: its first host address,
// with the subnet's prefix length.
func Gateway(subnet netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(subnet.Masked().Addr().Next(), subnet.Bits())
}

// ParseSubnet parses and checks a tap subnet: IPv4, room for the bridge
// and at least one guest, and written as a network address.
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a subnet in CIDR form such as \"172.30.0.0/24\"", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 subnet", s)
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("%q: want a prefix length between /8 and /30", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// Member is one tap VM as the network plan needs it.
type Member struct {
	Tap      string
	MAC      string
	Addr     netip.Addr
	Isolated bool // egress none
}

// FileForwardRecord, in Manager.StateDir, exists while banger has
// switched IPv4 forwarding on and holds the value it found ("0"). It is
// a file, not memory, so that a daemon that died with tap VMs leaves
// its successor the duty to switch forwarding back off.
const FileForwardRecord = "ip_forward.orig"

// Manager applies the network plan of one banger instance.
type Manager struct {
	Host   Host
	Names  Names
	Subnet netip.Prefix
	Log    *slog.Logger
	// StateDir keeps FileForwardRecord; "" keeps the record in memory
	// only (tests).
	StateDir string

	memRecord bool // the record, when StateDir is ""
}

func (m *Manager) nat(members []Member) NAT {
	n := NAT{Table: m.Names.Table(), Subnet: m.Subnet, Bridge: m.Names.Bridge()}
	for _, mb := range members {
		if mb.Isolated {
			n.Isolated = append(n.Isolated, mb.Addr)
		}
	}
	slices.SortFunc(n.Isolated, netip.Addr.Compare)
	return n
}

func (m *Manager) portFilter(members []Member) PortFilter {
	p := PortFilter{Table: m.Names.Table()}
	for _, mb := range members {
		p.Ports = append(p.Ports, Port{Tap: mb.Tap, MAC: mb.MAC, Addr: mb.Addr})
	}
	slices.SortFunc(p.Ports, func(a, b Port) int { return strings.Compare(a.Tap, b.Tap) })
	return p
}

// Attach makes the VM's TAP and everything it needs: the bridge, the
// port filter and NAT table for all members (which include this one) and
// forwarding. The filter is in place before the TAP joins the bridge, so
// no frame of the guest ever passes unchecked.
func (m *Manager) Attach(ctx context.Context, tap string, members []Member) error {
	if err := m.Host.EnsureBridge(ctx, m.Names.Bridge(), Gateway(m.Subnet)); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", m.Names.Bridge(), err)
	}
	if err := m.Host.ApplyPortFilter(ctx, m.portFilter(members)); err != nil {
		return fmt.Errorf("apply bridge table %s: %w", m.Names.Table(), err)
	}
	if err := m.enableForwarding(ctx); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	if err := m.Host.ApplyNAT(ctx, m.nat(members)); err != nil {
		return fmt.Errorf("apply nat table %s: %w", m.Names.Table(), err)
	}
	if err := m.Host.EnsureTap(ctx, tap, m.Names.Bridge()); err != nil {
		return fmt.Errorf("create tap %s: %w", tap, err)
	}
	return nil
}

// enableForwarding switches IPv4 forwarding on (NAT needs it), recording
// first that banger did so, so the record exists whenever banger's
// change does.
func (m *Manager) enableForwarding(ctx context.Context) error {
	on, err := m.Host.Forwarding(ctx)
	if err != nil {
		return err
	}
	if on {
		return nil
	}
	if err := m.writeRecord(); err != nil {
		return fmt.Errorf("record original ip_forward: %w", err)
	}
	if err := m.Host.SetForwarding(ctx, true); err != nil {
		return err
	}
	m.logger().Info("switched ip_forward on; it goes back off with the last tap VM")
	return nil
}

// RestoreForwarding switches IPv4 forwarding back off if banger switched
// it on, unless another banger instance has tap VMs in this network
// namespace (its bridge exists): they still need it, and the record is
// kept for a later try (the next teardown, reconcile or shutdown).
func (m *Manager) RestoreForwarding(ctx context.Context) error {
	rec, err := m.hasRecord()
	if err != nil || !rec {
		return err
	}
	links, err := m.Host.Links(ctx)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Kind == KindBridge && isInstanceBridge(l.Name) && l.Name != m.Names.Bridge() {
			m.logger().Info("ip_forward left on: another banger instance has tap VMs", "bridge", l.Name)
			return nil
		}
	}
	if err := m.Host.SetForwarding(ctx, false); err != nil {
		return fmt.Errorf("switch ip_forward back off: %w", err)
	}
	if err := m.removeRecord(); err != nil {
		return fmt.Errorf("remove ip_forward record: %w", err)
	}
	m.logger().Info("switched ip_forward back off, as found")
	return nil
}

func (m *Manager) recordPath() string { return filepath.Join(m.StateDir, FileForwardRecord) }

func (m *Manager) writeRecord() error {
	if m.StateDir == "" {
		m.memRecord = true
		return nil
	}
	tmp := m.recordPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte("0\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.recordPath())
}

func (m *Manager) hasRecord() (bool, error) {
	if m.StateDir == "" {
		return m.memRecord, nil
	}
	b, err := os.ReadFile(m.recordPath())
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read ip_forward record: %w", err)
	}
	if strings.TrimSpace(string(b)) != "0" {
		// Only ever written as "0"; anything else is not banger's to act on.
		return false, fmt.Errorf("%s holds %q, not \"0\"; remove it if banger did not switch ip_forward on", m.recordPath(), b)
	}
	return true, nil
}

func (m *Manager) removeRecord() error {
	if m.StateDir == "" {
		m.memRecord = false
		return nil
	}
	return os.Remove(m.recordPath())
}

// Detach removes a VM's TAP. When no member remains, the bridge and the
// NAT table go too: an instance without tap VMs leaves nothing behind.
func (m *Manager) Detach(ctx context.Context, tap string, remaining []Member) error {
	var errs []error
	if err := m.deleteLinkIfPresent(ctx, tap); err != nil {
		errs = append(errs, fmt.Errorf("delete tap %s: %w", tap, err))
	}
	if len(remaining) == 0 {
		errs = append(errs, m.teardown(ctx))
		return errors.Join(errs...)
	}
	if err := m.Host.ApplyNAT(ctx, m.nat(remaining)); err != nil {
		errs = append(errs, fmt.Errorf("apply nat table %s: %w", m.Names.Table(), err))
	}
	if err := m.Host.ApplyPortFilter(ctx, m.portFilter(remaining)); err != nil {
		errs = append(errs, fmt.Errorf("apply bridge table %s: %w", m.Names.Table(), err))
	}
	return errors.Join(errs...)
}

func (m *Manager) deleteLinkIfPresent(ctx context.Context, name string) error {
	links, err := m.Host.Links(ctx)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(links, func(l Link) bool { return l.Name == name }) {
		return nil
	}
	return m.Host.DeleteLink(ctx, name)
}

func (m *Manager) teardown(ctx context.Context) error {
	var errs []error
	if err := m.deleteLinkIfPresent(ctx, m.Names.Bridge()); err != nil {
		errs = append(errs, fmt.Errorf("delete bridge %s: %w", m.Names.Bridge(), err))
	}
	tables, err := m.Host.Tables(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list nft tables: %w", err))
	} else if slices.Contains(tables, m.Names.Table()) {
		if err := m.Host.DeleteTable(ctx, m.Names.Table()); err != nil {
			errs = append(errs, fmt.Errorf("delete nft table %s: %w", m.Names.Table(), err))
		}
	}
	btables, err := m.Host.BridgeTables(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list nft bridge tables: %w", err))
	} else if slices.Contains(btables, m.Names.Table()) {
		if err := m.Host.DeleteBridgeTable(ctx, m.Names.Table()); err != nil {
			errs = append(errs, fmt.Errorf("delete nft bridge table %s: %w", m.Names.Table(), err))
		}
	}
	errs = append(errs, m.RestoreForwarding(ctx))
	return errors.Join(errs...)
}

// Reconcile makes the host match members (every leased VM): TAPs of this
// instance that no member owns are deleted, and with no members at all the
// bridge, NAT and bridge tables go and forwarding is restored; otherwise
// bridge, both tables (rewritten, so stale rules, such as an orphan's
// port rules, vanish) and every member's TAP are ensured, which restores
// them after a host reboot. Names of other shapes are never touched.
func (m *Manager) Reconcile(ctx context.Context, members []Member) error {
	links, err := m.Host.Links(ctx)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if !m.Names.IsTap(l.Name) || slices.ContainsFunc(members, func(mb Member) bool { return mb.Tap == l.Name }) {
			continue
		}
		if err := m.Host.DeleteLink(ctx, l.Name); err != nil {
			errs = append(errs, fmt.Errorf("delete orphan tap %s: %w", l.Name, err))
			continue
		}
		m.logger().Info("removed orphan tap", "tap", l.Name)
	}
	if len(members) == 0 {
		errs = append(errs, m.teardown(ctx))
		return errors.Join(errs...)
	}
	for _, mb := range members {
		if err := m.Attach(ctx, mb.Tap, members); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) logger() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}
