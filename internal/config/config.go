// Package config loads the daemon's TOML configuration. Every key has a
// default, so a missing file is a valid config; a present file is checked
// strictly, because a misspelt key silently ignored is worse than an
// error at start.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bangerdev/banger/internal/egress"
	"github.com/bangerdev/banger/internal/network"
)

var (
	// ErrUnknownKey reports a key the config schema does not have.
	ErrUnknownKey = errors.New("unknown config key")
	// ErrInvalid reports a value outside what its key allows.
	ErrInvalid = errors.New("invalid config value")
)

// Egress modes for VM networking.
const (
	EgressAll  = "all"  // the guest reaches anything the host can
	EgressNone = "none" // only the host's forwards reach the guest
	// EgressAllow: the guest's NIC has no route out (as none); every
	// connection goes through the host's egress gateway and its policy.
	EgressAllow = "allow"
)

// Credential modes ([credentials] mode, `vm create --credentials`).
const (
	// CredentialsBroker: the guest gets placeholders; the host's egress
	// gateway swaps in the real secrets for brokered hosts.
	CredentialsBroker = "broker"
	// CredentialsCopy copies the real auth files into the VM (the old way).
	CredentialsCopy = "copy"
	// CredentialsNone gives the VM no credentials at all.
	CredentialsNone = "none"
)

// DefaultEgressPolicy is the named policy of egress mode allow unless
// the config picks another.
const DefaultEgressPolicy = "agents"

// Accelerators; AccelAuto picks KVM when /dev/kvm is usable.
const (
	AccelAuto = ""
	AccelTCG  = "tcg"
	AccelKVM  = "kvm"
)

// VMMs a VM can run under; VMMAuto picks Firecracker when its binary is
// there and KVM passes the real boot probe, QEMU otherwise.
const (
	VMMAuto        = "auto"
	VMMQEMU        = "qemu"
	VMMFirecracker = "firecracker"
)

// Limits enforced by Validate.
const (
	MinCPUs      = 1
	MaxCPUs      = 64
	MinMemoryMiB = 128
	MinDiskGiB   = 1
)

// Config is the daemon's configuration.
type Config struct {
	VM     VM     `toml:"vm"`
	Image  Image  `toml:"image"`
	Daemon Daemon `toml:"daemon"`
	Auth   Auth   `toml:"auth"`
	// Network configures tap mode.
	Network Network `toml:"network"`
	// Firecracker configures the Firecracker driver and its jailer.
	Firecracker Firecracker `toml:"firecracker"`
	// VMMProcess configures the VMM processes themselves.
	VMMProcess VMMProcess `toml:"vmm"`
	// Limits bound what guests and clients can make the host hold.
	Limits Limits `toml:"limits"`
	// Egress configures the egress gateway of VMs in egress mode allow.
	Egress Egress `toml:"egress"`
	// Credentials says how the host's agent credentials reach VMs.
	Credentials Credentials `toml:"credentials"`
}

// Egress configures the egress gateway.
type Egress struct {
	// DefaultPolicy is the named policy a VM in mode allow gets when its
	// create names none. (Not "policy": [egress.policy.NAME] are tables.)
	DefaultPolicy string `toml:"default_policy"`
	// Resolve overrides the host's resolver for upstream dials, like
	// curl --resolve: "host" or "host:port" → "ip:port".
	Resolve map[string]string `toml:"resolve"`
	// UpstreamCAFile adds trusted roots (PEM) for the broker's upstream
	// TLS: mirrors, corporate proxies, tests' fake upstreams.
	UpstreamCAFile string `toml:"upstream_ca_file"`
	// LogMaxRows caps each VM's connection log; the oldest rows go first.
	LogMaxRows int `toml:"log_max_rows"`
	// Policies are named policies; a name also shipped as a builtin
	// (egress.BuiltinPolicies) replaces the builtin.
	Policies map[string]EgressPolicy `toml:"policy"`
}

// EgressPolicy is one named policy's patterns (see egress.ParseRule).
type EgressPolicy struct {
	Allow []string `toml:"allow"`
	Deny  []string `toml:"deny"`
}

// Credentials says how the host's agent credentials reach VMs.
type Credentials struct {
	// Mode is "broker", "copy" or "none" (per VM: --credentials).
	Mode string `toml:"mode"`
	// Env names host environment variables (API keys) a VM gets: as
	// placeholders when brokered, as is when copied.
	Env []string `toml:"env"`
}

// PolicySet is every named policy: the builtins with the config's
// [egress.policy.NAME] tables over them.
func (e Egress) PolicySet() map[string]EgressPolicy {
	out := make(map[string]EgressPolicy, len(egress.BuiltinPolicies)+len(e.Policies))
	for name, allow := range egress.BuiltinPolicies {
		out[name] = EgressPolicy{Allow: slices.Clone(allow)}
	}
	for name, p := range e.Policies {
		out[name] = p
	}
	return out
}

// PolicyNames lists the named policies, sorted.
func (e Egress) PolicyNames() []string {
	var names []string
	for n := range e.PolicySet() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// VMMProcess says whom the VMM processes run as.
type VMMProcess struct {
	// UIDRange is "FIRST-LAST": when the daemon runs as root, each VM's
	// QEMU (and each jailed Firecracker) runs under its own uid and gid
	// from this range, so a VMM taken over by its guest holds no
	// privilege and cannot reach another VM's process or files. Empty
	// runs VMMs as the daemon's own user (root!), which weakens that.
	UIDRange string `toml:"uid_range"`
}

// DefaultUIDRange sits in the block systemd leaves unused between its
// container ranges (524288-1879048191) and its foreign range
// (2147352576-), far from regular and system users, and below 2^31,
// where some tools break.
const DefaultUIDRange = "2000000000-2000065535"

// IDRange is an inclusive range of uids (each VM uses the same number as
// its gid). The zero IDRange is empty.
type IDRange struct{ First, Last uint32 }

// Empty says the range holds no id (per-VM users are off).
func (r IDRange) Empty() bool { return r.First == 0 && r.Last == 0 }

// Contains says whether id is in the range.
func (r IDRange) Contains(id uint32) bool { return !r.Empty() && id >= r.First && id <= r.Last }

// String renders the range as the config writes it.
func (r IDRange) String() string {
	if r.Empty() {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Limits of a uid range: clear of root, system and regular users and of
// nobody (65534), and below 2^31-1 (many tools treat larger ids as
// negative; 2^31-1 and 2^32-1 are special).
const (
	minRangeUID = 65536
	maxRangeUID = 1<<31 - 2
)

// ParseIDRange reads "FIRST-LAST"; "" is the empty range.
func ParseIDRange(s string) (IDRange, error) {
	if s == "" {
		return IDRange{}, nil
	}
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return IDRange{}, fmt.Errorf("want \"FIRST-LAST\" such as %q, or \"\" to run VMMs as the daemon's user", DefaultUIDRange)
	}
	if first < minRangeUID || last > maxRangeUID || first > last {
		return IDRange{}, fmt.Errorf("want %d <= FIRST <= LAST <= %d (ids of no existing user), such as %q", minRangeUID, maxRangeUID, DefaultUIDRange)
	}
	return IDRange{First: uint32(first), Last: uint32(last)}, nil
}

// UIDs is the parsed [vmm] uid_range (Validate has checked it).
func (v VMMProcess) UIDs() IDRange {
	r, _ := ParseIDRange(v.UIDRange)
	return r
}

// Limits bound what a guest (or a client) can make the host store or
// hold open: a guest is hostile input, and the host's disk is shared.
type Limits struct {
	// ConsoleLogMiB caps each generation of a VM's console log
	// (console.log and console.log.1), so at most twice this per VM.
	ConsoleLogMiB int `toml:"console_log_mib"`
	// GuestStreamMiB caps any single stream a guest sends that the host
	// writes to disk: a `workspace pull` bundle, a derive's /root tar.
	GuestStreamMiB int `toml:"guest_stream_mib"`
	// MinFreeMiB is free space left over after the estimated need of a
	// large write (image build, create, derive, import, pull).
	MinFreeMiB int `toml:"min_free_mib"`
	// MaxConnections caps concurrent connections to the daemon's socket
	// (attach, exec and event streams included).
	MaxConnections int `toml:"max_connections"`
}

// Firecracker configures the Firecracker driver (docs/jailer.md for the
// jailer settings).
type Firecracker struct {
	// Binary and JailerBinary override the executables' paths.
	Binary       string `toml:"binary"`
	JailerBinary string `toml:"jailer_binary"`
	// Jailer runs every Firecracker VM under the jailer (`vm create
	// --jailer` asks for it per VM).
	Jailer bool `toml:"jailer"`
	// UID and GID Firecracker runs as in the jail when [vmm] uid_range
	// is empty; otherwise every jailed VM gets its own from that range.
	UID int `toml:"uid"`
	GID int `toml:"gid"`
	// ChrootBase is where jails are built; it should be on the same
	// filesystem as the VM directories so disks are hard-linked.
	ChrootBase string `toml:"chroot_base"`
	// ParentCgroup groups banger's microVMs; Cgroups are "<file>=<value>"
	// limits the jailer writes.
	ParentCgroup string   `toml:"parent_cgroup"`
	Cgroups      []string `toml:"cgroups"`
	// CgroupVersion is the host's cgroup hierarchy, "1" or "2".
	CgroupVersion string `toml:"cgroup_version"`
}

// Network modes of a VM's NIC.
const (
	NetUser = "user" // the VMM's user-mode stack; forwards on 127.0.0.1
	NetTap  = "tap"  // a TAP on banger's bridge, NAT for outbound traffic
)

// Network configures tap mode: banger's bridge takes the subnet's first
// host address and guests get the following ones.
type Network struct {
	Subnet string `toml:"subnet"`
	// DNS are the resolvers tap-mode guests use; empty means the host's
	// own non-loopback nameservers from /etc/resolv.conf.
	DNS []string `toml:"dns"`
}

// Auth says which of the daemon user's coding-agent credentials are copied
// into every VM at boot. A token refreshed inside a VM is not copied back.
type Auth struct {
	// Home is the directory Files are relative to; empty means the
	// daemon user's $HOME.
	Home string `toml:"home"`
	// Files are paths relative to Home, written to the same paths under
	// the guest's /root.
	Files []string `toml:"files"`
}

// DefaultAuthFiles are the credentials of opencode, Claude Code and pi.
var DefaultAuthFiles = []string{
	".local/share/opencode/auth.json",
	".claude/.credentials.json",
	".claude.json",
	".pi/agent/auth.json",
}

// VM holds defaults for new VMs; API requests may override them.
type VM struct {
	CPUs        int      `toml:"cpus"`
	MemoryMiB   int      `toml:"memory_mib"`
	DiskGiB     int      `toml:"disk_gib"`
	Egress      string   `toml:"egress"`
	Net         string   `toml:"net"`
	BootTimeout Duration `toml:"boot_timeout"`
	// IdlePark parks a VM (saves it to disk, ends its VMM) once it has
	// had no attach, exec, ssh or forwarded connection and little CPU for
	// this long; 0 ("" or "0" in the file) never parks.
	IdlePark Duration `toml:"idle_park"`
	// VMM is "auto", "qemu" or "firecracker".
	VMM string `toml:"vmm"`
	// ExtraSerialPorts adds raw virtio-serial ports to QEMU VMs (guest
	// /dev/virtio-ports/NAME, host socket port-NAME.sock in the VM's
	// directory), with nothing of banger on them: the benchmarks' raw
	// channel baseline. Empty (the default) in normal use.
	ExtraSerialPorts []string `toml:"extra_serial_ports"`
}

// Image holds what `image build` bootstraps from.
type Image struct {
	Suite          string `toml:"suite"`
	Mirror         string `toml:"mirror"`
	SecurityMirror string `toml:"security_mirror"`
	// ReadySnapshot: a build that makes an image the default, and a
	// promote, boot it once and save its ready snapshot, which `vm
	// create` restores from instead of booting.
	ReadySnapshot bool `toml:"ready_snapshot"`
}

// Daemon holds settings of the daemon process itself.
type Daemon struct {
	LogLevel string `toml:"log_level"`
	// Accel forces an accelerator; empty means auto.
	Accel string `toml:"accel"`
	// AgentPath overrides the banger-agent binary delivered to VMs;
	// empty means the one installed next to banger.
	AgentPath string `toml:"agent_path"`
}

// Duration is a time.Duration written as a Go duration string ("180s",
// "3m") in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler. "" is zero, which
// keys that need a positive duration refuse in Validate.
func (d *Duration) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration; want a number with a unit such as \"180s\" or \"3m\"", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Default returns the configuration used for every key a file omits.
func Default() Config {
	return Config{
		VM: VM{
			CPUs:             2,
			MemoryMiB:        1024,
			DiskGiB:          4,
			Egress:           EgressAllow,
			Net:              NetUser,
			BootTimeout:      Duration{180 * time.Second},
			VMM:              VMMAuto,
			ExtraSerialPorts: []string{},
		},
		Image: Image{
			Suite:          "bookworm",
			Mirror:         "http://deb.debian.org/debian",
			SecurityMirror: "http://deb.debian.org/debian-security",
			ReadySnapshot:  true,
		},
		Daemon: Daemon{
			LogLevel: "info",
			Accel:    AccelAuto,
		},
		Auth: Auth{Files: append([]string(nil), DefaultAuthFiles...)},
		Firecracker: Firecracker{
			UID: 65534, GID: 65534, // nobody/nogroup, not root
			ChrootBase:    "/srv/jailer",
			ParentCgroup:  "banger",
			Cgroups:       []string{},
			CgroupVersion: "2",
		},
		Network:    Network{Subnet: "172.30.0.0/24", DNS: []string{}},
		VMMProcess: VMMProcess{UIDRange: DefaultUIDRange},
		Limits:     Limits{ConsoleLogMiB: 8, GuestStreamMiB: 4096, MinFreeMiB: 256, MaxConnections: 256},
		Egress: Egress{
			DefaultPolicy: DefaultEgressPolicy,
			Resolve:       map[string]string{},
			LogMaxRows:    5000,
			Policies:      map[string]EgressPolicy{},
		},
		Credentials: Credentials{
			Mode: CredentialsBroker,
			Env:  []string{"ANTHROPIC_API_KEY", "OPENAI_API_KEY"},
		},
	}
}

// Load reads the config file at path. A missing file (or an empty path)
// yields Default(); any other problem names the file.
func Load(path string) (Config, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Default(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes TOML on top of Default() and validates the result.
func Parse(b []byte) (Config, error) {
	c := Default()
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(&c)
	if err != nil {
		return Config{}, fmt.Errorf("parse: %w", err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return Config{}, unknownKeys(undecoded)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// unknownKeys names each unknown key once: an unknown table is reported
// without listing every key inside it.
func unknownKeys(undecoded []toml.Key) error {
	var names, quoted []string
	for _, k := range undecoded {
		name := k.String()
		if slices.ContainsFunc(names, func(parent string) bool { return strings.HasPrefix(name, parent+".") }) {
			continue
		}
		names = append(names, name)
		quoted = append(quoted, strconv.Quote(name))
	}
	return fmt.Errorf("%w %s; known keys: %s", ErrUnknownKey, strings.Join(quoted, ", "), strings.Join(KnownKeys(), ", "))
}

// KnownKeys lists every key of the schema as "table.key", derived from
// the struct tags so it cannot drift from them.
func KnownKeys() []string {
	var keys []string
	top := reflect.TypeFor[Config]()
	for i := range top.NumField() {
		table := top.Field(i)
		for j := range table.Type.NumField() {
			keys = append(keys, table.Tag.Get("toml")+"."+table.Type.Field(j).Tag.Get("toml"))
		}
	}
	return keys
}

// Validate checks every value and reports all problems at once.
// serialPortName is what an extra virtio-serial port may be called: it is
// a QEMU option value and a file name on both sides.
var serialPortName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,31}$`)

func (c Config) Validate() error {
	var errs []error
	bad := func(key string, value any, allowed string) {
		errs = append(errs, fmt.Errorf("%w: %s = %#v; %s", ErrInvalid, key, value, allowed))
	}
	if c.VM.CPUs < MinCPUs || c.VM.CPUs > MaxCPUs {
		bad("vm.cpus", c.VM.CPUs, fmt.Sprintf("want %d to %d", MinCPUs, MaxCPUs))
	}
	if c.VM.MemoryMiB < MinMemoryMiB {
		bad("vm.memory_mib", c.VM.MemoryMiB, fmt.Sprintf("want at least %d", MinMemoryMiB))
	}
	if c.VM.DiskGiB < MinDiskGiB {
		bad("vm.disk_gib", c.VM.DiskGiB, fmt.Sprintf("want at least %d", MinDiskGiB))
	}
	if !slices.Contains([]string{EgressAll, EgressNone, EgressAllow}, c.VM.Egress) {
		bad("vm.egress", c.VM.Egress, `want "all", "none" or "allow" (through the egress gateway)`)
	}
	errs = append(errs, c.validateEgress()...)
	if !slices.Contains([]string{NetUser, NetTap}, c.VM.Net) {
		bad("vm.net", c.VM.Net, `want "user" or "tap"`)
	}
	if _, err := network.ParseSubnet(c.Network.Subnet); err != nil {
		bad("network.subnet", c.Network.Subnet, err.Error())
	}
	for _, d := range c.Network.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
			bad("network.dns", d, "want IPv4 addresses such as \"192.0.2.53\"")
		}
	}
	if c.VM.BootTimeout.Duration <= 0 {
		bad("vm.boot_timeout", c.VM.BootTimeout.String(), `want a positive duration such as "180s"`)
	}
	if c.VM.IdlePark.Duration < 0 {
		bad("vm.idle_park", c.VM.IdlePark.String(), `want a duration such as "30m", or "" or "0" to never park idle VMs`)
	}
	for _, p := range c.VM.ExtraSerialPorts {
		if !serialPortName.MatchString(p) || p == "banger.agent" {
			bad("vm.extra_serial_ports", p, "want short names of letters, digits, '.', '-' (not banger.agent)")
		}
	}
	if !slices.Contains([]string{VMMAuto, VMMQEMU, VMMFirecracker}, c.VM.VMM) {
		bad("vm.vmm", c.VM.VMM, `want "auto", "qemu" or "firecracker"`)
	}
	for k, v := range map[string]string{"firecracker.binary": c.Firecracker.Binary, "firecracker.jailer_binary": c.Firecracker.JailerBinary} {
		if v != "" && !strings.HasPrefix(v, "/") {
			bad(k, v, "want an absolute path, or empty to use PATH")
		}
	}
	if !strings.HasPrefix(c.Firecracker.ChrootBase, "/") {
		bad("firecracker.chroot_base", c.Firecracker.ChrootBase, "want an absolute path")
	}
	if c.Firecracker.UID < 0 || c.Firecracker.GID < 0 {
		bad("firecracker.uid/gid", fmt.Sprintf("%d/%d", c.Firecracker.UID, c.Firecracker.GID), "want non-negative ids")
	}
	if _, err := ParseIDRange(c.VMMProcess.UIDRange); err != nil {
		bad("vmm.uid_range", c.VMMProcess.UIDRange, err.Error())
	}
	if c.Firecracker.CgroupVersion != "1" && c.Firecracker.CgroupVersion != "2" {
		bad("firecracker.cgroup_version", c.Firecracker.CgroupVersion, `want "1" or "2"`)
	}
	for _, cg := range c.Firecracker.Cgroups {
		if k, _, ok := strings.Cut(cg, "="); !ok || k == "" {
			bad("firecracker.cgroups", cg, `want "<cgroup file>=<value>", e.g. "cpu.max=200000 100000"`)
		}
	}
	if c.Image.Suite == "" || strings.ContainsFunc(c.Image.Suite, notSuiteRune) {
		bad("image.suite", c.Image.Suite, `want a Debian suite name such as "bookworm"`)
	}
	if !httpURL(c.Image.Mirror) {
		bad("image.mirror", c.Image.Mirror, "want an http:// or https:// URL")
	}
	if !httpURL(c.Image.SecurityMirror) {
		bad("image.security_mirror", c.Image.SecurityMirror, "want an http:// or https:// URL")
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Daemon.LogLevel) {
		bad("daemon.log_level", c.Daemon.LogLevel, `want "debug", "info", "warn" or "error"`)
	}
	if !slices.Contains([]string{AccelAuto, AccelTCG, AccelKVM}, c.Daemon.Accel) {
		bad("daemon.accel", c.Daemon.Accel, `want "" (auto), "tcg" or "kvm"`)
	}
	if c.Daemon.AgentPath != "" && !strings.HasPrefix(c.Daemon.AgentPath, "/") {
		bad("daemon.agent_path", c.Daemon.AgentPath, "want an absolute path, or empty for the bundled agent")
	}
	if c.Auth.Home != "" && !strings.HasPrefix(c.Auth.Home, "/") {
		bad("auth.home", c.Auth.Home, "want an absolute path, or empty for $HOME")
	}
	for _, f := range c.Auth.Files {
		if f == "" || !filepath.IsLocal(f) || filepath.Clean(f) != f || strings.HasPrefix(f, ".ssh/") {
			bad("auth.files", f, "want clean paths relative to the home directory, outside ~/.ssh")
		}
	}
	for k, v := range map[string]int{"limits.console_log_mib": c.Limits.ConsoleLogMiB, "limits.guest_stream_mib": c.Limits.GuestStreamMiB, "limits.max_connections": c.Limits.MaxConnections} {
		if v < 1 {
			bad(k, v, "want a positive number")
		}
	}
	if c.Limits.MinFreeMiB < 0 {
		bad("limits.min_free_mib", c.Limits.MinFreeMiB, "want 0 or more")
	}
	return errors.Join(errs...)
}

// policyName is what a named egress policy may be called: it is typed
// after --egress, next to all, none and allow.
var policyName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// envName is an environment variable name [credentials] env may list.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

func (c Config) validateEgress() []error {
	var errs []error
	bad := func(key string, value any, allowed string) {
		errs = append(errs, fmt.Errorf("%w: %s = %#v; %s", ErrInvalid, key, value, allowed))
	}
	e := c.Egress
	const patterns = `want host names (api.example.com), *.suffix (*.example.com) or CIDRs (192.0.2.0/24), each with an optional :port`
	for _, name := range slices.Sorted(maps.Keys(e.Policies)) {
		if !policyName.MatchString(name) || slices.Contains([]string{EgressAll, EgressNone, EgressAllow}, name) {
			bad("egress.policy", name, "want a policy name of a lowercase letter, then lowercase letters, digits, '-' or '_' (not all, none or allow)")
			continue
		}
		p := e.Policies[name]
		for _, list := range []struct {
			key      string
			patterns []string
		}{{"allow", p.Allow}, {"deny", p.Deny}} {
			for _, pat := range list.patterns {
				if _, err := egress.ParseRule(pat); err != nil {
					bad("egress.policy."+name+"."+list.key, pat, patterns+" ("+err.Error()+")")
				}
			}
		}
	}
	if _, ok := e.PolicySet()[e.DefaultPolicy]; !ok {
		bad("egress.default_policy", e.DefaultPolicy, "want one of the named policies: "+strings.Join(e.PolicyNames(), ", "))
	}
	for _, from := range slices.Sorted(maps.Keys(e.Resolve)) {
		to := e.Resolve[from]
		host := from
		if h, port, err := net.SplitHostPort(from); err == nil {
			if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
				bad("egress.resolve", from, `want "host" or "host:port" keys`)
				continue
			}
			host = h
		}
		if host == "" || strings.ContainsAny(host, "*/ ") {
			bad("egress.resolve", from, `want "host" or "host:port" keys`)
		}
		if ap, err := netip.ParseAddrPort(to); err != nil || ap.Port() == 0 {
			bad("egress.resolve."+from, to, `want "ip:port" such as "127.0.0.1:18443"`)
		}
	}
	if e.UpstreamCAFile != "" && !strings.HasPrefix(e.UpstreamCAFile, "/") {
		bad("egress.upstream_ca_file", e.UpstreamCAFile, "want an absolute path to PEM certificates, or empty for the system roots only")
	}
	if e.LogMaxRows < 1 {
		bad("egress.log_max_rows", e.LogMaxRows, "want a positive number of rows per VM")
	}
	if !slices.Contains([]string{CredentialsBroker, CredentialsCopy, CredentialsNone}, c.Credentials.Mode) {
		bad("credentials.mode", c.Credentials.Mode, `want "broker", "copy" or "none"`)
	}
	for _, v := range c.Credentials.Env {
		if !envName.MatchString(v) {
			bad("credentials.env", v, "want environment variable names such as ANTHROPIC_API_KEY")
		}
	}
	return errs
}

func notSuiteRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_')
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}
