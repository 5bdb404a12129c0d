package sshkeys

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestGenerateEd25519(t *testing.T) {
	priv, pub, err := GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatalf("private key does not parse: %v", err)
	}
	if !bytes.HasPrefix(priv, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Errorf("private key is not OpenSSH PEM:\n%s", priv)
	}
	key, _, _, rest, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatalf("public line does not parse: %v", err)
	}
	if len(rest) != 0 || !bytes.HasSuffix(pub, []byte("\n")) || bytes.Count(pub, []byte("\n")) != 1 {
		t.Errorf("public line %q is not exactly one line", pub)
	}
	if key.Type() != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s", key.Type())
	}
	if !bytes.Equal(key.Marshal(), signer.PublicKey().Marshal()) {
		t.Error("public line does not belong to the private key")
	}
	if got, err := PublicLine(priv); err != nil || !bytes.Equal(got, pub) {
		t.Errorf("PublicLine = %q, %v; want %q", got, err, pub)
	}
	if _, err := PublicLine([]byte("garbage")); !errors.Is(err, ErrBadKey) {
		t.Errorf("PublicLine(garbage) err = %v", err)
	}

	priv2, _, err := GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(priv, priv2) {
		t.Error("two generated keys are equal")
	}
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestEnsureClientKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ssh")
	p, pub, err := EnsureClientKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(dir, "id_ed25519") {
		t.Errorf("path = %q", p)
	}
	if m := mode(t, p); m != 0o600 {
		t.Errorf("key mode %v, want 0600", m)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %v, want 0700", m)
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey(pub); err != nil {
		t.Fatal(err)
	}

	// Created once: later calls return the same key and repair modes.
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p2, pub2, err := EnsureClientKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p2 != p || !bytes.Equal(pub, pub2) {
		t.Fatal("second call produced a different key")
	}
	if mode(t, p) != 0o600 || mode(t, dir) != 0o700 {
		t.Errorf("modes not repaired: key %v dir %v", mode(t, p), mode(t, dir))
	}

	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("stray files in ssh dir: %v", entries)
	}

	// A corrupt key is reported, never silently replaced.
	if err := os.WriteFile(p, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureClientKey(dir); !errors.Is(err, ErrBadKey) {
		t.Fatalf("corrupt key: err = %v", err)
	}
}

func TestEnsureClientKeyConcurrent(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	pubs := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, pub, err := EnsureClientKey(dir)
			if err != nil {
				t.Error(err)
			}
			pubs[i] = pub
		})
	}
	wg.Wait()
	for _, p := range pubs[1:] {
		if !bytes.Equal(p, pubs[0]) {
			t.Fatal("concurrent callers got different keys")
		}
	}
}

func TestKnownHosts(t *testing.T) {
	_, hostPub, err := GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	line := KnownHostsLine("banger-vm1", hostPub)
	if !strings.HasPrefix(line, "banger-vm1 ssh-ed25519 ") || !strings.HasSuffix(line, "\n") {
		t.Errorf("line = %q", line)
	}
	if KnownHostsLine("x", []byte("garbage")) != "" {
		t.Error("KnownHostsLine accepted garbage")
	}

	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := WriteKnownHosts(p, "banger-vm1", hostPub); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, p); m != 0o600 {
		t.Errorf("known_hosts mode %v, want 0600", m)
	}
	// The pinned file must accept exactly this key for the alias.
	cb, err := knownhosts.New(p)
	if err != nil {
		t.Fatal(err)
	}
	key, _, _, _, _ := ssh.ParseAuthorizedKey(hostPub)
	addr := fakeAddr("127.0.0.1:2222")
	if err := cb("banger-vm1:22", addr, key); err != nil {
		t.Errorf("pinned key rejected: %v", err)
	}
	_, otherPub, _ := GenerateEd25519()
	other, _, _, _, _ := ssh.ParseAuthorizedKey(otherPub)
	if err := cb("banger-vm1:22", addr, other); err == nil {
		t.Error("a different host key was accepted")
	}

	for _, bad := range []struct{ alias, pub string }{
		{"", string(hostPub)},
		{"a b", string(hostPub)},
		{"a,b", string(hostPub)},
		{"ok", "garbage"},
	} {
		if err := WriteKnownHosts(p, bad.alias, []byte(bad.pub)); err == nil {
			t.Errorf("WriteKnownHosts(%q, %q) succeeded", bad.alias, bad.pub)
		}
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

func TestSSHArgs(t *testing.T) {
	base := SSHOpts{Port: 40022, KeyFile: "/d/ssh/id_ed25519", KnownHostsFile: "/d/vms/a/known_hosts", HostKeyAlias: "banger-a"}
	common := []string{
		"-l", "root", "-p", "40022", "-i", "/d/ssh/id_ed25519",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "PreferredAuthentications=publickey",
		"-o", "HostKeyAlias=banger-a", "-o", "UserKnownHostsFile=/d/vms/a/known_hosts",
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
		"-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", "LogLevel=ERROR",
	}
	with := func(f func(*SSHOpts)) SSHOpts { o := base; f(&o); return o }
	tests := []struct {
		name string
		opts SSHOpts
		want []string
	}{
		{"login", base, append(slices.Clone(common), "127.0.0.1")},
		{"force tty", with(func(o *SSHOpts) { o.TTY = TTYForce }), append(slices.Clone(common), "-t", "127.0.0.1")},
		{
			"command without tty",
			with(func(o *SSHOpts) { o.TTY = TTYNone; o.Command = []string{"git", "-C", "/root/repo", "status"} }),
			append(slices.Clone(common), "-T", "127.0.0.1", "--", "git", "-C", "/root/repo", "status"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SSHArgs(tt.opts)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("SSHArgs:\n got %q\nwant %q", got, tt.want)
			}
			for _, a := range got {
				if strings.EqualFold(a, "StrictHostKeyChecking=no") || strings.EqualFold(a, "StrictHostKeyChecking=accept-new") {
					t.Fatalf("weak host key checking in %q", got)
				}
			}
		})
	}

	o := SSHArgs(SSHOpts{User: "dev", Host: "10.0.0.2"})
	if o[1] != "dev" || o[3] != "22" || o[len(o)-1] != "10.0.0.2" {
		t.Errorf("overrides/defaults not applied: %q", o)
	}
}

func TestSSHKeygenAgrees(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("ssh-keygen not installed")
	}
	p, pub, err := EnsureClientKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(keygen, "-y", "-f", p).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -y: %v: %s", err, out)
	}
	// ssh-keygen appends the (empty) comment; compare type and key.
	if got, want := strings.Fields(string(out)), strings.Fields(string(pub)); !slices.Equal(got[:2], want[:2]) {
		t.Fatalf("ssh-keygen derives %q, we wrote %q", out, pub)
	}
}
