package agent

import (
	"fmt"
	"net/netip"
	"strings"
)

// NetConfig is the guest NIC setup banger passes on the kernel command
// line (`banger.ip=ADDR/PREFIX banger.gw=GW banger.dns=IP[,IP]`), since
// the Debian cloud kernel ignores `ip=`.
type NetConfig struct {
	// Address is the interface address with its prefix length; invalid
	// (zero) when banger.ip is absent.
	Address netip.Prefix
	Gateway netip.Addr
	DNS     []netip.Addr
}

// maxDNS bounds banger.dns; resolv.conf honours three anyway.
const maxDNS = 8

// ParseCmdline extracts banger's keys from a kernel command line (the
// contents of /proc/cmdline). Other parameters are ignored; a banger key
// with a malformed value is an error. As in the kernel, a later
// occurrence of a key wins, double quotes group a value with spaces, and
// parsing stops at "--" (what follows belongs to init).
func ParseCmdline(s string) (NetConfig, error) {
	var nc NetConfig
	for _, arg := range splitCmdline(s) {
		if arg == "--" {
			break
		}
		key, val, _ := strings.Cut(arg, "=")
		switch key {
		case "banger.ip":
			p, err := netip.ParsePrefix(val)
			if err != nil {
				return NetConfig{}, fmt.Errorf("kernel command line: banger.ip: %w", err)
			}
			if p.Addr().Zone() != "" {
				return NetConfig{}, fmt.Errorf("kernel command line: banger.ip %q: zones are not supported", val)
			}
			nc.Address = p
		case "banger.gw":
			a, err := parseHostAddr(val)
			if err != nil {
				return NetConfig{}, fmt.Errorf("kernel command line: banger.gw: %w", err)
			}
			nc.Gateway = a
		case "banger.dns":
			var dns []netip.Addr
			for _, v := range strings.Split(val, ",") {
				a, err := parseHostAddr(v)
				if err != nil {
					return NetConfig{}, fmt.Errorf("kernel command line: banger.dns: %w", err)
				}
				dns = append(dns, a)
			}
			if len(dns) > maxDNS {
				return NetConfig{}, fmt.Errorf("kernel command line: banger.dns: %d servers, at most %d", len(dns), maxDNS)
			}
			nc.DNS = dns
		}
	}
	return nc, nil
}

func parseHostAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: zones are not supported", s)
	}
	return a, nil
}

// splitCmdline splits on spaces outside double quotes and drops the
// quotes, like the kernel's next_arg.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// String renders nc as kernel command-line keys (the inverse of
// ParseCmdline).
func (nc NetConfig) String() string {
	var parts []string
	if nc.Address.IsValid() {
		parts = append(parts, "banger.ip="+nc.Address.String())
	}
	if nc.Gateway.IsValid() {
		parts = append(parts, "banger.gw="+nc.Gateway.String())
	}
	if len(nc.DNS) > 0 {
		dns := make([]string, len(nc.DNS))
		for i, a := range nc.DNS {
			dns[i] = a.String()
		}
		parts = append(parts, "banger.dns="+strings.Join(dns, ","))
	}
	return strings.Join(parts, " ")
}
