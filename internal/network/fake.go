package network

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Host for tests of the plan logic. It keeps state
// like the kernel would (links, their masters and addresses, nft tables
// with their rendered rules) and refuses what the kernel refuses:
// duplicate names, unknown masters, names longer than IFNAMSIZ.
type Fake struct {
	mu         sync.Mutex
	links      map[string]Link
	addrs      map[string][]netip.Prefix
	tables     map[string][]string
	btables    map[string][]string // bridge family
	forwarding bool
	// Calls records every mutating call, in order.
	Calls []string
}

// NewFake returns an empty host.
func NewFake() *Fake {
	return &Fake{links: map[string]Link{}, addrs: map[string][]netip.Prefix{}, tables: map[string][]string{}, btables: map[string][]string{}}
}

var _ Host = (*Fake)(nil)

// AddForeign adds a link or table banger did not create (kind "" makes a
// table named name instead, kind "bridge-table" a bridge-family table).
func (f *Fake) AddForeign(name, kind string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch kind {
	case "":
		f.tables[name] = []string{"foreign"}
		return
	case "bridge-table":
		f.btables[name] = []string{"foreign"}
		return
	}
	f.links[name] = Link{Name: name, Kind: kind, Up: true}
}

// State renders the host as sorted lines, e.g. "link bgXtab tuntap master=bgXbr up".
func (f *Fake) State() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, l := range f.links {
		s := fmt.Sprintf("link %s %s", l.Name, l.Kind)
		if l.Master != "" {
			s += " master=" + l.Master
		}
		for _, a := range f.addrs[l.Name] {
			s += " addr=" + a.String()
		}
		if l.Isolated {
			s += " isolated"
		}
		if l.Up {
			s += " up"
		}
		out = append(out, s)
	}
	for name, rules := range f.tables {
		out = append(out, "table "+name+": "+strings.Join(rules, "; "))
	}
	for name, rules := range f.btables {
		out = append(out, "bridge table "+name+": "+strings.Join(rules, "; "))
	}
	if f.forwarding {
		out = append(out, "ip_forward=1")
	}
	slices.Sort(out)
	return out
}

func (f *Fake) record(format string, a ...any) { f.Calls = append(f.Calls, fmt.Sprintf(format, a...)) }

// Links implements Host.
func (f *Fake) Links(context.Context) ([]Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Values(f.links)), nil
}

func checkName(name string) error {
	if name == "" || len(name) > IFNameMax {
		return fmt.Errorf("invalid interface name %q", name)
	}
	return nil
}

// EnsureBridge implements Host.
func (f *Fake) EnsureBridge(_ context.Context, name string, addr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkName(name); err != nil {
		return err
	}
	if l, ok := f.links[name]; ok && l.Kind != KindBridge {
		return fmt.Errorf("%s exists and is a %s", name, l.Kind)
	}
	f.record("ensure bridge %s %s", name, addr)
	f.links[name] = Link{Name: name, Kind: KindBridge, Up: true}
	f.addrs[name] = []netip.Prefix{addr}
	return nil
}

// EnsureTap implements Host.
func (f *Fake) EnsureTap(_ context.Context, name, master string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkName(name); err != nil {
		return err
	}
	if m, ok := f.links[master]; !ok || m.Kind != KindBridge {
		return fmt.Errorf("no bridge %s", master)
	}
	if l, ok := f.links[name]; ok && l.Kind != KindTap {
		return fmt.Errorf("%s exists and is a %s", name, l.Kind)
	}
	f.record("ensure tap %s master=%s", name, master)
	f.links[name] = Link{Name: name, Kind: KindTap, Master: master, Up: true, Isolated: true}
	return nil
}

// DeleteLink implements Host.
func (f *Fake) DeleteLink(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[name]; !ok {
		return fmt.Errorf("link %s not found", name)
	}
	f.record("delete link %s", name)
	delete(f.links, name)
	delete(f.addrs, name)
	// Like the kernel, deleting a bridge detaches its ports.
	for n, l := range f.links {
		if l.Master == name {
			l.Master = ""
			f.links[n] = l
		}
	}
	return nil
}

// Tables implements Host.
func (f *Fake) Tables(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.tables)), nil
}

// ApplyNAT implements Host; the rules are rendered like `nft list` would.
func (f *Fake) ApplyNAT(_ context.Context, n NAT) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("apply nat %s", n.Table)
	f.tables[n.Table] = RenderNAT(n)
	return nil
}

// DeleteTable implements Host.
func (f *Fake) DeleteTable(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tables[name]; !ok {
		return fmt.Errorf("table %s not found", name)
	}
	f.record("delete table %s", name)
	delete(f.tables, name)
	return nil
}

// BridgeTables implements Host.
func (f *Fake) BridgeTables(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.btables)), nil
}

// ApplyPortFilter implements Host, refusing what the real one refuses
// (a port without a valid MAC or IPv4 address).
func (f *Fake) ApplyPortFilter(_ context.Context, p PortFilter) error {
	rules, err := renderPortFilter(p)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("apply bridge table %s", p.Table)
	f.btables[p.Table] = rules
	return nil
}

// DeleteBridgeTable implements Host.
func (f *Fake) DeleteBridgeTable(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.btables[name]; !ok {
		return fmt.Errorf("bridge table %s not found", name)
	}
	f.record("delete bridge table %s", name)
	delete(f.btables, name)
	return nil
}

// Forwarding implements Host.
func (f *Fake) Forwarding(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forwarding, nil
}

// SetForwarding implements Host.
func (f *Fake) SetForwarding(_ context.Context, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("set ip_forward %v", on)
	f.forwarding = on
	return nil
}

// RenderNAT writes n's rules in nft syntax; the fake stores this, and the
// real Host's rules are built from the same NAT value.
func RenderNAT(n NAT) []string {
	out := []string{
		fmt.Sprintf("postrouting: ip saddr %s oifname != %q masquerade", n.Subnet.Masked(), n.Bridge),
		fmt.Sprintf("forward: iifname %q oifname %q drop", n.Bridge, n.Bridge),
	}
	for _, a := range n.Isolated {
		out = append(out, fmt.Sprintf("forward: iifname %q ip saddr %s drop", n.Bridge, a))
	}
	for _, a := range n.Isolated {
		out = append(out, fmt.Sprintf("input: iifname %q ip saddr %s ct state != established,related drop", n.Bridge, a))
	}
	return out
}
