package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Rule is one allow or deny pattern: a host name (exact, or "*.suffix"
// for every name under suffix at any depth, not suffix itself), or an
// address range (CIDR, or a single address), each optionally limited to
// one port. Names match names only and ranges match addresses only: a
// name is never resolved to check a range, so a rule means what it says.
type Rule struct {
	// Host is the lowercased name without a trailing dot; for a wildcard
	// it is the suffix ("example.com" for "*.example.com"). "" for a range.
	Host     string
	Wildcard bool
	// Prefix is the range of an address rule (a single address is /32 or
	// /128); invalid for a name rule.
	Prefix netip.Prefix
	// Port is the only port the rule covers; 0 means every port.
	Port uint16
}

// ruleExamples is said in every ParseRule error, so a user who typed a
// bad pattern sees what a good one looks like.
const ruleExamples = `valid patterns: "api.example.com", "*.example.com", "github.com:443", "10.1.2.0/24", "10.1.2.3:22", "[2001:db8::1]:443", "2001:db8::/32"`

// ParseRule parses one pattern as `--allow`, `--deny` and the config's
// policy lists take it.
func ParseRule(s string) (Rule, error) {
	r, err := parseRule(s)
	if err != nil {
		return Rule{}, fmt.Errorf("egress pattern %q: %w (%s)", s, err, ruleExamples)
	}
	return r, nil
}

func parseRule(s string) (Rule, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return Rule{}, errors.New("empty pattern")
	}
	host, portText := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return Rule{}, errors.New("missing ] after an IPv6 address")
		}
		host, portText = s[1:end], s[end+1:]
		if portText != "" {
			if !strings.HasPrefix(portText, ":") {
				return Rule{}, errors.New("only :PORT may follow ]")
			}
			portText = portText[1:]
			if portText == "" {
				return Rule{}, errors.New("missing port after :")
			}
		}
		if !strings.Contains(host, ":") {
			return Rule{}, errors.New("brackets are for IPv6 addresses only")
		}
	case strings.Count(s, ":") == 1:
		i := strings.IndexByte(s, ':')
		host, portText = s[:i], s[i+1:]
		if portText == "" {
			return Rule{}, errors.New("missing port after :")
		}
	}
	var r Rule
	if portText != "" {
		p, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || p == 0 || portText[0] == '+' {
			return Rule{}, fmt.Errorf("port %q is not a number from 1 to 65535", portText)
		}
		r.Port = uint16(p)
	}
	if host == "" {
		return Rule{}, errors.New("missing host before the port")
	}
	if strings.Contains(host, "/") {
		p, err := netip.ParsePrefix(host)
		if err != nil {
			return Rule{}, fmt.Errorf("bad address range: %v", err)
		}
		r.Prefix = p.Masked()
		return r, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return Rule{}, errors.New("an address with a zone cannot be a rule")
		}
		a = a.Unmap()
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
		return r, nil
	}
	if strings.Contains(host, ":") {
		return Rule{}, errors.New("not an IPv6 address (put a port after [ADDRESS])")
	}
	if strings.HasPrefix(host, "*.") {
		r.Wildcard = true
		host = strings.TrimSuffix(host[2:], ".")
		if host == "" {
			return Rule{}, errors.New(`"*." needs a domain after it, as in "*.example.com"`)
		}
	}
	host = strings.TrimSuffix(host, ".")
	if strings.Contains(host, "*") {
		return Rule{}, errors.New(`"*" may only start a pattern, as "*." before a domain`)
	}
	if err := checkHostname(host); err != nil {
		return Rule{}, err
	}
	r.Host = host
	return r, nil
}

// checkHostname accepts lowercase DNS names of letters, digits, '-' and
// '_' (some service names use it) in labels of 1 to 63 bytes.
func checkHostname(h string) error {
	if h == "" {
		return errors.New("empty host name")
	}
	if len(h) > 253 {
		return errors.New("host name longer than 253 bytes")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return fmt.Errorf("empty label in host name %q", h)
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q longer than 63 bytes", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("host name %q has the character %q; use letters, digits, '-' and '.'", h, string(rune(c)))
			}
		}
	}
	return nil
}

// NormalizeName is the form names are compared in: lowercase, no
// trailing dot. It returns "" for what is not a valid host name, and for
// address literals (those are not names).
func NormalizeName(name string) string {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if checkHostname(name) != nil {
		return ""
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return ""
	}
	return name
}

// String gives the pattern back in its canonical form.
func (r Rule) String() string {
	var host string
	switch {
	case r.Prefix.IsValid():
		if r.Prefix.IsSingleIP() {
			host = r.Prefix.Addr().String()
		} else {
			host = r.Prefix.String()
		}
		if r.Port != 0 && r.Prefix.Addr().Is6() {
			host = "[" + host + "]"
		}
	case r.Wildcard:
		host = "*." + r.Host
	default:
		host = r.Host
	}
	if r.Port != 0 {
		return host + ":" + strconv.Itoa(int(r.Port))
	}
	return host
}

// matchName reports whether the name rule r covers name (normalized).
func (r Rule) matchName(name string) bool {
	if name == "" || r.Host == "" {
		return false
	}
	if r.Wildcard {
		return len(name) > len(r.Host)+1 && strings.HasSuffix(name, r.Host) && name[len(name)-len(r.Host)-1] == '.'
	}
	return name == r.Host
}

func (r Rule) matchAddr(ip netip.Addr) bool {
	return ip.IsValid() && r.Prefix.IsValid() && r.Prefix.Contains(ip.Unmap())
}

func (r Rule) matchPort(port uint16) bool { return r.Port == 0 || r.Port == port }

// Policy is what a VM's connections are judged by. Deny rules win over
// allow rules; what no rule allows is denied.
type Policy struct {
	Name  string
	Allow []Rule
	Deny  []Rule
}

// Decision is a Policy's verdict on one connection.
type Decision struct {
	Allow bool
	// Rule is the deciding rule's pattern, "" for the default deny.
	Rule string
	// ByAddr: the deciding rule was an address range, so the gateway must
	// dial the address the guest named, not a name (which could resolve
	// anywhere).
	ByAddr bool
	rule   Rule
}

// NewPolicy parses the allow and deny patterns of a policy.
func NewPolicy(name string, allow, deny []string) (Policy, error) {
	p := Policy{Name: name}
	var errs []error
	for _, s := range allow {
		r, err := ParseRule(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.Allow = append(p.Allow, r)
	}
	for _, s := range deny {
		r, err := ParseRule(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.Deny = append(p.Deny, r)
	}
	if err := errors.Join(errs...); err != nil {
		return Policy{}, fmt.Errorf("policy %q: %w", name, err)
	}
	return p, nil
}

// Decide judges a connection to name (may be "": only the address is
// known) at ip (may be invalid: only the name counts, as for a fake IP)
// on port. Name rules look at name only, range rules at ip only.
func (p Policy) Decide(name string, ip netip.Addr, port uint16) Decision {
	name = NormalizeName(name)
	for _, r := range p.Deny {
		if r.matchPort(port) && (r.matchName(name) || r.matchAddr(ip)) {
			return Decision{Rule: r.String(), rule: r}
		}
	}
	// A name rule first: dialing a checked name is the better outcome
	// when both kinds match.
	for _, r := range p.Allow {
		if r.matchPort(port) && r.matchName(name) {
			return Decision{Allow: true, Rule: r.String(), rule: r}
		}
	}
	for _, r := range p.Allow {
		if r.matchPort(port) && r.matchAddr(ip) {
			return Decision{Allow: true, Rule: r.String(), ByAddr: true, rule: r}
		}
	}
	return Decision{}
}

// DeniesAddr reports the deny range rule covering ip on port, if any:
// the gateway checks a resolved upstream address against it, so a deny
// range holds even for allowed names.
func (p Policy) DeniesAddr(ip netip.Addr, port uint16) (string, bool) {
	for _, r := range p.Deny {
		if r.matchPort(port) && r.matchAddr(ip) {
			return r.String(), true
		}
	}
	return "", false
}

// AllowsName reports whether DNS should resolve name: some allow rule
// covers it on some port, and no deny rule covers it on every port.
func (p Policy) AllowsName(name string) bool {
	_, ok := p.nameRule(name)
	return ok
}

func (p Policy) nameRule(name string) (string, bool) {
	name = NormalizeName(name)
	if name == "" {
		return "", false
	}
	for _, r := range p.Deny {
		if r.Port == 0 && r.matchName(name) {
			return r.String(), false
		}
	}
	for _, r := range p.Allow {
		if r.matchName(name) {
			return r.String(), true
		}
	}
	return "", false
}

// hasNameDeny reports whether a deny name rule could overturn an allow
// made on the address alone: then the gateway waits for the name.
func (p Policy) hasNameDeny() bool {
	for _, r := range p.Deny {
		if r.Host != "" {
			return true
		}
	}
	return false
}

// BuiltinPolicies are the named policies banger ships; the config may
// override them by name. Every host of "agents" is allowed on ports 443
// and 80 only: the agents, registries and mirrors speak HTTPS, and apt
// and a few redirects still use plain HTTP; nothing else (SSH to GitHub
// included) is needed to install and run an agent.
var BuiltinPolicies = map[string][]string{
	"agents": withPorts([]string{
		// Anthropic / Claude Code
		"api.anthropic.com", "console.anthropic.com", "statsig.anthropic.com", "*.anthropic.com",
		"claude.ai", "*.claude.ai", "claude.com", "*.claude.com",
		// OpenAI / Codex
		"api.openai.com", "auth.openai.com", "chatgpt.com", "*.chatgpt.com",
		// opencode
		"opencode.ai", "*.opencode.ai", "models.dev",
		// npm
		"registry.npmjs.org", "*.npmjs.org", "registry.yarnpkg.com",
		// PyPI
		"pypi.org", "files.pythonhosted.org",
		// Debian
		"deb.debian.org", "security.debian.org",
		// GitHub
		"github.com", "*.github.com", "*.githubusercontent.com",
	}, 443, 80),
}

func withPorts(hosts []string, ports ...uint16) []string {
	var out []string
	for _, h := range hosts {
		for _, p := range ports {
			out = append(out, h+":"+strconv.Itoa(int(p)))
		}
	}
	return out
}

// Learn returns the smallest allowlist that would have let the logged
// connections run: one exact "name:port" per name and port a tcp record
// reached (allowed or denied), an "address:port" for connections that
// had no name, and a bare "name" for a name only ever looked up in DNS
// (its port is unknown: the lookup was refused, so no connection
// followed). It never widens to "*.suffix": a reviewer should see each
// host. Leak records are left out: allowing the host would not help,
// the broker blocks them. The list is sorted.
func Learn(records []Record) []string {
	seen := map[string]bool{}
	named := map[string]bool{}
	var dnsOnly []string
	for _, rec := range records {
		if rec.Decision == DecisionLeak {
			continue
		}
		name := NormalizeName(rec.Name)
		switch rec.Proto {
		case "dns":
			if name != "" {
				dnsOnly = append(dnsOnly, name)
			}
		case "tcp":
			if rec.Port == 0 {
				continue
			}
			var pat string
			if name != "" {
				named[name] = true
				pat = name + ":" + strconv.Itoa(int(rec.Port))
			} else {
				a, err := netip.ParseAddr(rec.Addr)
				if err != nil || FakeRange.Contains(a.Unmap()) {
					continue // a fake address without its name means nothing outside this VM
				}
				r := Rule{Prefix: netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), Port: rec.Port}
				pat = r.String()
			}
			seen[pat] = true
		}
	}
	for _, n := range dnsOnly {
		if !named[n] {
			seen[n] = true
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
