package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agentapi"
	"golang.org/x/crypto/ssh"
)

func ed25519PEM(t *testing.T) (string, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(blk)), sp
}

type initEnv struct {
	root, seed, cmdline string
	hostname            string
	opts                InitOptions
}

func newInitEnv(t *testing.T, seed any, cmdline string) *initEnv {
	t.Helper()
	dir := t.TempDir()
	e := &initEnv{root: filepath.Join(dir, "root"), seed: filepath.Join(dir, "config.json"), cmdline: filepath.Join(dir, "cmdline")}
	os.MkdirAll(filepath.Join(e.root, "etc"), 0o755)
	os.WriteFile(filepath.Join(e.root, "etc/hosts"), []byte("127.0.0.1\tlocalhost\n127.0.1.1\tbanger\n::1\tlocalhost ip6-localhost\n"), 0o644)
	os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(e.root, "etc/resolv.conf"))
	switch s := seed.(type) {
	case string:
		os.WriteFile(e.seed, []byte(s), 0o600)
	case nil:
	default:
		b, _ := json.Marshal(s)
		os.WriteFile(e.seed, b, 0o600)
	}
	os.WriteFile(e.cmdline, []byte(cmdline), 0o444)
	e.opts = InitOptions{Root: e.root, SeedConfig: e.seed, Cmdline: e.cmdline,
		SetHostname: func(name string) error { e.hostname = name; return nil }}
	return e
}

func (e *initEnv) read(t *testing.T, rel string) (string, os.FileMode) {
	t.Helper()
	p := filepath.Join(e.root, rel)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	return string(b), st.Mode().Perm()
}

func TestInit(t *testing.T) {
	key, pub := ed25519PEM(t)
	e := newInitEnv(t, agentapi.SeedConfig{
		Hostname:       "dev-1",
		SSHHostKeys:    map[string]string{"ed25519": key},
		AuthorizedKeys: "ssh-ed25519 AAAA user@host",
	}, "console=ttyS0 banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3\n")
	if err := Init(e.opts); err != nil {
		t.Fatal(err)
	}
	if e.hostname != "dev-1" {
		t.Errorf("kernel host name %q", e.hostname)
	}
	checks := []struct {
		rel  string
		want string
		mode os.FileMode
	}{
		{"etc/hostname", "dev-1\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tdev-1\n::1\tlocalhost ip6-localhost\n", 0o644},
		{"etc/ssh/ssh_host_ed25519_key", key, 0o600},
		{"etc/ssh/ssh_host_ed25519_key.pub", string(ssh.MarshalAuthorizedKey(pub)), 0o644},
		{"root/.ssh/authorized_keys", "ssh-ed25519 AAAA user@host\n", 0o600},
		{NetworkFile, "# Written by banger-agent init from the kernel command line.\n[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n", 0o644},
		{"etc/resolv.conf", "nameserver 10.0.2.3\n", 0o644},
	}
	for _, c := range checks {
		got, mode := e.read(t, c.rel)
		if got != c.want || mode != c.mode {
			t.Errorf("%s: %q mode %o, want %q mode %o", c.rel, got, mode, c.want, c.mode)
		}
	}
	if st, err := os.Stat(filepath.Join(e.root, "root/.ssh")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("/root/.ssh: %v %v", st.Mode(), err)
	}
	if fi, _ := os.Lstat(filepath.Join(e.root, "etc/resolv.conf")); fi.Mode()&os.ModeSymlink != 0 {
		t.Error("resolv.conf is still a symlink")
	}
	// A second boot gives the same result (no duplicate hosts lines).
	if err := Init(e.opts); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.read(t, "etc/hosts"); strings.Count(got, "127.0.1.1") != 1 {
		t.Errorf("hosts after second run:\n%s", got)
	}
	leftovers, _ := filepath.Glob(filepath.Join(e.root, "etc/ssh/.*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestInitFailures(t *testing.T) {
	key, _ := ed25519PEM(t)
	tests := []struct {
		name    string
		seed    any
		cmdline string
		errs    []string
		network bool // the NIC file is still written
	}{
		{"no seed", nil, "banger.ip=10.0.2.15/24", []string{"read seed config"}, true},
		{"bad json", `{"hostname": "x", "ssh_host_keys": {"ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----`, "banger.ip=10.0.2.15/24", []string{"malformed JSON near byte"}, true},
		{"bad hostname", agentapi.SeedConfig{Hostname: "bad_name!"}, "banger.ip=10.0.2.15/24", []string{"invalid host name"}, true},
		{"unknown key type", agentapi.SeedConfig{SSHHostKeys: map[string]string{"../../etc/passwd": key}}, "", []string{`unknown key type "../../etc/passwd"`}, false},
		{"wrong key type", agentapi.SeedConfig{SSHHostKeys: map[string]string{"rsa": key}}, "", []string{"holds a ssh-ed25519 key"}, false},
		{"garbage key", agentapi.SeedConfig{SSHHostKeys: map[string]string{"ed25519": "not a key"}}, "", []string{"ssh host key ed25519"}, false},
		{"bad cmdline", agentapi.SeedConfig{Hostname: "ok"}, "banger.ip=nope", []string{"banger.ip"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newInitEnv(t, tt.seed, tt.cmdline)
			err := Init(e.opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tt.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), key[40:60]) {
				t.Errorf("error leaks key material: %v", err)
			}
			_, statErr := os.Stat(filepath.Join(e.root, NetworkFile))
			if (statErr == nil) != tt.network {
				t.Errorf("network file written: %v, want %v", statErr == nil, tt.network)
			}
		})
	}
}

func TestSetLoopbackHost(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "127.0.1.1\tvm\n"},
		{"127.0.0.1 localhost\n", "127.0.0.1 localhost\n127.0.1.1\tvm\n"},
		{"127.0.0.1 localhost\n127.0.1.1 old old.local\n127.0.1.1 dup\n# c\n", "127.0.0.1 localhost\n127.0.1.1\tvm\n# c\n"},
		{"127.0.0.1 localhost", "127.0.0.1 localhost\n127.0.1.1\tvm\n"},
	}
	for _, tt := range tests {
		if got := string(setLoopbackHost([]byte(tt.in), "vm")); got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestValidHostname(t *testing.T) {
	for name, want := range map[string]bool{
		"vm": true, "dev-1": true, "a.b.c": true, strings.Repeat("a", 63): true,
		"": false, "-x": false, "x-": false, "a_b": false, "a..b": false, "a b": false,
		strings.Repeat("a", 64): false, strings.Repeat("a.", 32) + "a": false, "a\nb": false,
	} {
		if got := validHostname(name); got != want {
			t.Errorf("%q: %v, want %v", name, got, want)
		}
	}
}
