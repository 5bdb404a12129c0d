package egress

// TEMPORARY stand-in for helper A's policy.go / gateway.go (branch
// i15-gateway): the names the daemon codes against, with just enough
// behaviour for the daemon's tests. The lead deletes this file at merge.

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Rule is one allow or deny pattern.
type Rule struct {
	Host   string
	Suffix bool
	Prefix netip.Prefix
	Port   uint16
	Text   string
}

// ParseRule reads "host", "*.suffix", a CIDR, each with an optional ":port".
func ParseRule(s string) (Rule, error) {
	r := Rule{Text: s}
	if s == "" || len(s) > 255 {
		return r, fmt.Errorf("want a host name, *.suffix or CIDR, with an optional :port")
	}
	body := s
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		p, err := strconv.ParseUint(s[i+1:], 10, 16)
		if err != nil || p == 0 {
			return r, fmt.Errorf("bad port in %q: want 1-65535", s)
		}
		r.Port, body = uint16(p), s[:i]
	}
	if pfx, err := netip.ParsePrefix(body); err == nil {
		r.Prefix = pfx.Masked()
		return r, nil
	}
	if a, err := netip.ParseAddr(body); err == nil {
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
		return r, nil
	}
	if strings.HasPrefix(body, "*.") {
		r.Suffix, body = true, body[2:]
	}
	if body == "" || strings.ContainsAny(body, "*/ ") {
		return r, fmt.Errorf("%q: want a host name (api.example.com), *.suffix (*.example.com) or CIDR (10.0.0.0/8), with an optional :port", s)
	}
	r.Host = strings.ToLower(body)
	return r, nil
}

// Policy is a named allow/deny list.
type Policy struct {
	Name        string
	Allow, Deny []Rule
}

// NewPolicy parses allow and deny.
func NewPolicy(name string, allow, deny []string) (Policy, error) {
	p := Policy{Name: name}
	for _, s := range allow {
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, err
		}
		p.Allow = append(p.Allow, r)
	}
	for _, s := range deny {
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, err
		}
		p.Deny = append(p.Deny, r)
	}
	return p, nil
}

// BuiltinPolicies are the shipped named policies.
var BuiltinPolicies = map[string][]string{
	"agents": {"api.anthropic.com", "*.anthropic.com", "api.openai.com", "registry.npmjs.org", "github.com", "*.github.com"},
}

// Learn returns the names a log shows were used.
func Learn(recs []Record) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range recs {
		n := r.Name
		if n == "" {
			n = r.Addr
		}
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Options configure a Gateway.
type Options struct {
	Resolve     map[string]string
	RootCAs     *x509.CertPool
	Policy      func(vmID string) (Policy, string, bool)
	Record      func(Record)
	Broker      Interceptor
	DialTimeout time.Duration
}

// Gateway decides guest connections.
type Gateway struct{ opts Options }

// New returns a gateway.
func New(o Options) *Gateway { return &Gateway{opts: o} }

// Handle denies everything (stand-in) and records it.
func (g *Gateway) Handle(ctx context.Context, vm VMRef, s net.Conn) {
	defer s.Close()
	_, label, _ := g.opts.Policy(vm.ID)
	if g.opts.Record != nil {
		g.opts.Record(Record{Time: time.Now(), VMID: vm.ID, VM: vm.Name, Proto: "tcp", Decision: DecisionDeny, Policy: label})
	}
}

// Forget drops a VM's per-VM state (fake IPs).
func (g *Gateway) Forget(vmID string) {}
