package agent

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want NetConfig
		err  string
	}{
		{name: "none", in: "console=ttyS0 root=LABEL=root rw quiet\n"},
		{name: "all", in: "console=ttyS0 banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3,1.1.1.1\n", want: NetConfig{
			Address: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"),
			DNS: []netip.Addr{netip.MustParseAddr("10.0.2.3"), netip.MustParseAddr("1.1.1.1")},
		}},
		{name: "ipv6", in: "banger.ip=fd00::5/64 banger.gw=fd00::1", want: NetConfig{
			Address: netip.MustParsePrefix("fd00::5/64"), Gateway: netip.MustParseAddr("fd00::1"),
		}},
		{name: "last wins", in: "banger.ip=10.0.0.1/8 banger.ip=10.0.2.15/24", want: NetConfig{Address: netip.MustParsePrefix("10.0.2.15/24")}},
		{name: "quoted", in: `foo="a b" banger.ip="10.0.2.15/24"`, want: NetConfig{Address: netip.MustParsePrefix("10.0.2.15/24")}},
		{name: "after --", in: "quiet -- banger.ip=garbage", want: NetConfig{}},
		{name: "similar key", in: "banger.ipx=1 xbanger.ip=2", want: NetConfig{}},
		{name: "tabs and newlines", in: "\tbanger.gw=10.0.2.2\n", want: NetConfig{Gateway: netip.MustParseAddr("10.0.2.2")}},
		{name: "no prefix", in: "banger.ip=10.0.2.15", err: "banger.ip"},
		{name: "bad gw", in: "banger.gw=10.0.2", err: "banger.gw"},
		{name: "empty dns", in: "banger.dns=", err: "banger.dns"},
		{name: "dns trailing comma", in: "banger.dns=1.1.1.1,", err: "banger.dns"},
		{name: "bare key", in: "banger.ip", err: "banger.ip"},
		{name: "zone", in: "banger.gw=fe80::1%eth0", err: "zones"},
		{name: "newline injection", in: "banger.ip=\"10.0.2.15/24\nGateway=1.2.3.4\"", err: "banger.ip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCmdline(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzParseCmdline: no panic; whatever parses renders back to keys that
// parse to the same config, and never to text that could break out of a
// networkd line.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3")
	f.Add(`banger.ip="fd00::1/64" -- banger.gw=x`)
	f.Add("banger.dns=1.1.1.1,2.2.2.2,::1")
	f.Add(`"banger.ip=1.2.3.4/32`)
	f.Fuzz(func(t *testing.T, s string) {
		nc, err := ParseCmdline(s)
		if err != nil {
			return
		}
		again, err := ParseCmdline(nc.String())
		if err != nil {
			t.Fatalf("rendered %q does not parse: %v", nc.String(), err)
		}
		if !reflect.DeepEqual(nc, again) {
			t.Fatalf("round trip: %+v vs %+v", nc, again)
		}
		if strings.ContainsAny(nc.String(), "\n\r\"") {
			t.Fatalf("rendered config contains a line break or quote: %q", nc.String())
		}
	})
}
