package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/bangerdev/banger/internal/agentapi"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Default locations of `banger-agent init`'s inputs.
const (
	DefaultSeedConfig = "/run/banger/seed/config.json"
	DefaultCmdline    = "/proc/cmdline"
)

// NetworkFile is where the NIC setup goes, relative to the root; /run so
// it never outlives the boot that wrote it.
const NetworkFile = "run/systemd/network/10-banger.network"

// InitOptions says where `banger-agent init` reads and writes.
type InitOptions struct {
	// Root prefixes every path written ("/" in the guest).
	Root string
	// SeedConfig is the JSON agentapi.SeedConfig; Cmdline is /proc/cmdline.
	SeedConfig string
	Cmdline    string
	// SetHostname sets the kernel host name; nil skips it (tests must not
	// rename the machine they run on).
	SetHostname func(name string) error
	// ReloadSystemd runs `systemctl daemon-reload`; nil skips it (tests,
	// and any root other than "/").
	ReloadSystemd func() error
	// UpdateCACerts runs update-ca-certificates and ApplyEgressRules
	// programs the egress redirect; nil skips them (tests, other roots).
	UpdateCACerts    func() error
	ApplyEgressRules func() error
	Log              *slog.Logger
}

// DefaultInitOptions is what the guest runs at boot.
func DefaultInitOptions() InitOptions {
	return InitOptions{
		Root:             "/",
		SeedConfig:       DefaultSeedConfig,
		Cmdline:          DefaultCmdline,
		SetHostname:      func(name string) error { return unix.Sethostname([]byte(name)) },
		ReloadSystemd:    reloadSystemd,
		UpdateCACerts:    updateCACerts,
		ApplyEgressRules: applyEgressRules,
	}
}

// hostKeyTypes are the key types accepted in the seed, with the public
// key algorithm each must hold; the map key also names the file, so only
// these exact names are allowed.
var hostKeyTypes = map[string]func(algo string) bool{
	"ed25519": func(a string) bool { return a == ssh.KeyAlgoED25519 },
	"rsa":     func(a string) bool { return a == ssh.KeyAlgoRSA },
	"ecdsa":   func(a string) bool { return strings.HasPrefix(a, "ecdsa-sha2-") },
}

// Init applies this VM's identity: a repaired home directory, host name,
// SSH host keys, root's authorized keys, the host user's agent auth
// files, and the NIC configuration from the kernel command line. Every step runs even when another fails, so that a bad seed still
// leaves the network up for debugging; the errors are joined.
func Init(opts InitOptions) error {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Root == "" {
		opts.Root = "/"
	}
	var errs []error
	// The home directory first: authorized_keys and auth files go into it.
	changed, err := RepairHome(opts.Root)
	errs = append(errs, err)
	for _, c := range changed {
		opts.Log.Info("home repaired", "change", c)
	}
	seed, err := readSeed(opts.SeedConfig)
	if err != nil {
		errs = append(errs, err)
	} else {
		if seed.Hostname != "" {
			errs = append(errs, applyHostname(opts, seed.Hostname))
		}
		errs = append(errs, writeHostKeys(opts.Root, seed.SSHHostKeys))
		if seed.AuthorizedKeys != "" {
			errs = append(errs, writeAuthorizedKeys(opts.Root, seed.AuthorizedKeys))
		}
		errs = append(errs, writeAuthFiles(opts.Root, seed.AuthFiles, opts.Log))
		errs = append(errs, applyEgressSeed(opts, seed.Egress))
	}
	errs = append(errs, secureOpencode(opts))
	if b, err := os.ReadFile(opts.Cmdline); err != nil {
		errs = append(errs, fmt.Errorf("read kernel command line: %w", err))
	} else if nc, err := ParseCmdline(string(b)); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, writeNetwork(opts.Root, nc))
		if nc.Address.IsValid() {
			opts.Log.Info("network configured", "address", nc.Address, "gateway", nc.Gateway)
		}
	}
	return errors.Join(errs...)
}

func readSeed(path string) (agentapi.SeedConfig, error) {
	var seed agentapi.SeedConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return seed, fmt.Errorf("read seed config: %w", err)
	}
	if err := json.Unmarshal(b, &seed); err != nil {
		// A syntax error quotes the offending character, which could be
		// part of a private key: report only where it is.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return seed, fmt.Errorf("parse seed config %s: malformed JSON near byte %d", path, se.Offset)
		}
		return seed, fmt.Errorf("parse seed config %s: %w", path, err)
	}
	return seed, nil
}

// hostnamePattern is an RFC 1123 host name of at most 64 characters (the
// kernel's limit).
var hostnamePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func validHostname(name string) bool {
	return len(name) <= 64 && hostnamePattern.MatchString(name)
}

func applyHostname(opts InitOptions, name string) error {
	if !validHostname(name) {
		return fmt.Errorf("invalid host name %q in seed config", name)
	}
	if opts.SetHostname != nil {
		if err := opts.SetHostname(name); err != nil {
			return fmt.Errorf("set host name: %w", err)
		}
	}
	root := opts.Root
	if err := writeFile(root, "etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	hosts, err := os.ReadFile(filepath.Join(root, "etc/hosts"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read /etc/hosts: %w", err)
	}
	return writeFile(root, "etc/hosts", setLoopbackHost(hosts, name), 0o644)
}

// setLoopbackHost makes the 127.0.1.1 line of an /etc/hosts name the
// host (Debian's convention, so `hostname -f` and sudo resolve it),
// keeping every other line.
func setLoopbackHost(hosts []byte, name string) []byte {
	line := "127.0.1.1\t" + name
	var out []string
	found := false
	for _, l := range strings.Split(strings.TrimRight(string(hosts), "\n"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "127.0.1.1" {
			if !found {
				out = append(out, line)
				found = true
			}
			continue
		}
		out = append(out, l)
	}
	if !found {
		out = append(out, line)
	}
	if len(out) > 0 && out[0] == "" {
		out = out[1:]
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

func writeHostKeys(root string, keys map[string]string) error {
	var errs []error
	for typ, pemKey := range keys {
		signer, err := parseHostKey(typ, pemKey)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		name := "etc/ssh/ssh_host_" + typ + "_key"
		if err := writeFile(root, name, []byte(pemKey), 0o600); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := writeFile(root, name+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// parseHostKey checks that pemKey is a private key of the type its map
// key names. Its errors never include the key itself.
func parseHostKey(typ, pemKey string) (ssh.Signer, error) {
	match, ok := hostKeyTypes[typ]
	if !ok {
		return nil, fmt.Errorf("ssh host key: unknown key type %q", typ)
	}
	signer, err := ssh.ParsePrivateKey([]byte(pemKey))
	if err != nil {
		return nil, fmt.Errorf("ssh host key %s: %w", typ, err)
	}
	if algo := signer.PublicKey().Type(); !match(algo) {
		return nil, fmt.Errorf("ssh host key %s: holds a %s key", typ, algo)
	}
	return signer, nil
}

func writeAuthorizedKeys(root, keys string) error {
	if !strings.HasSuffix(keys, "\n") {
		keys += "\n"
	}
	dir := filepath.Join(root, "root/.ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create /root/.ssh: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; sshd's
	// StrictModes rejects a group- or world-writable one.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod /root/.ssh: %w", err)
	}
	return writeFile(root, "root/.ssh/authorized_keys", []byte(keys), 0o600)
}

// writeNetwork writes the systemd-networkd unit for eth0 and, when DNS
// servers are given, /etc/resolv.conf (minbase has no resolved to take
// networkd's DNS= line).
func writeNetwork(root string, nc NetConfig) error {
	if !nc.Address.IsValid() {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("# Written by banger-agent init from the kernel command line.\n")
	b.WriteString("[Match]\nName=eth0\n\n[Network]\n")
	fmt.Fprintf(&b, "Address=%s\n", nc.Address)
	if nc.Gateway.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", nc.Gateway)
	}
	for _, d := range nc.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	if err := writeFile(root, NetworkFile, b.Bytes(), 0o644); err != nil {
		return err
	}
	if len(nc.DNS) == 0 {
		return nil
	}
	var r bytes.Buffer
	for _, d := range nc.DNS {
		fmt.Fprintf(&r, "nameserver %s\n", d)
	}
	// resolv.conf may be a symlink into a resolver that is not running;
	// replace the link, not its target.
	_ = os.Remove(filepath.Join(root, "etc/resolv.conf"))
	return writeFile(root, "etc/resolv.conf", r.Bytes(), 0o644)
}

// writeFile replaces root/rel atomically with data and mode, creating
// parent directories (0755) as needed: a crash mid-boot never leaves a
// truncated key or unit behind.
func writeFile(root, rel string, data []byte, mode os.FileMode) error {
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp*")
	if err != nil {
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write /%s: %w", rel, err)
	}
	return nil
}
