// Package sshkeys makes the keys banger uses to reach its VMs and pins
// each VM's host key, so `vm ssh` verifies the guest strictly instead of
// trusting on first use.
package sshkeys

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bangerdev/banger/internal/system"
)

// ErrBadKey reports key material that does not parse.
var ErrBadKey = errors.New("invalid ssh key")

// ClientKeyName is the file name of banger's own client key.
const ClientKeyName = "id_ed25519"

// GenerateEd25519 returns a new private key in OpenSSH PEM form and its
// public half as an authorized_keys line (with trailing newline).
func GenerateEd25519() (priv, pub []byte, err error) {
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(sk, "")
	if err != nil {
		return nil, nil, fmt.Errorf("marshal private key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pk)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(block), ssh.MarshalAuthorizedKey(sshPub), nil
}

// PublicLine derives the authorized_keys line of a private key.
func PublicLine(priv []byte) ([]byte, error) {
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return ssh.MarshalAuthorizedKey(signer.PublicKey()), nil
}

// EnsureClientKey returns banger's client key in dir, creating it on first
// use. The key is written under a temporary name and hard-linked into
// place, so two processes racing here end up sharing one key instead of
// one overwriting the key the other already handed out.
func EnsureClientKey(dir string) (privPath string, pubLine []byte, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("create ssh dir: %w", err)
	}
	// ssh refuses keys in a directory others can write to.
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("create ssh dir: %w", err)
	}
	privPath = filepath.Join(dir, ClientKeyName)

	pubLine, err = readClientKey(privPath)
	if !errors.Is(err, fs.ErrNotExist) {
		return privPath, pubLine, err
	}

	priv, pub, err := GenerateEd25519()
	if err != nil {
		return "", nil, err
	}
	tmp, err := os.CreateTemp(dir, "."+ClientKeyName+".tmp-*")
	if err != nil {
		return "", nil, fmt.Errorf("write client key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(priv)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return "", nil, fmt.Errorf("write client key: %w", werr)
	}
	// CreateTemp already made it 0600.
	if err := os.Link(tmp.Name(), privPath); err != nil {
		if errors.Is(err, fs.ErrExist) {
			pubLine, err = readClientKey(privPath)
			return privPath, pubLine, err
		}
		return "", nil, fmt.Errorf("write client key: %w", err)
	}
	return privPath, pub, nil
}

func readClientKey(path string) ([]byte, error) {
	priv, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read client key: %w", err)
	}
	pub, err := PublicLine(priv)
	if err != nil {
		return nil, fmt.Errorf("read client key %s: %w", path, err)
	}
	// ssh ignores a private key others can read; repair rather than fail.
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("read client key: %w", err)
	}
	return pub, nil
}

// KnownHostsLine returns a known_hosts line (with trailing newline)
// pinning pubKey, an authorized_keys-format public key, to alias, the
// name given to ssh as HostKeyAlias. It returns "" if pubKey does not
// parse; WriteKnownHosts reports that as an error.
func KnownHostsLine(alias string, pubKey []byte) string {
	key, err := parsePublic(pubKey)
	if err != nil {
		return ""
	}
	return knownhosts.Line([]string{alias}, key) + "\n"
}

// WriteKnownHosts replaces path (mode 0600) with a known_hosts file that
// trusts exactly hostPub for alias.
func WriteKnownHosts(path, alias string, hostPub []byte) error {
	if alias == "" || bytes.ContainsAny([]byte(alias), " \t\r\n,#*?!") {
		return fmt.Errorf("write known_hosts: invalid host alias %q", alias)
	}
	if _, err := parsePublic(hostPub); err != nil {
		return fmt.Errorf("write known_hosts for %s: %w", alias, err)
	}
	if err := system.WriteFileAtomic(path, []byte(KnownHostsLine(alias, hostPub)), 0o600); err != nil {
		return fmt.Errorf("write known_hosts: %w", err)
	}
	return nil
}

func parsePublic(b []byte) (ssh.PublicKey, error) {
	key, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return key, nil
}

// TTY says whether ssh allocates a terminal.
type TTY int

const (
	TTYAuto  TTY = iota // ssh decides: a terminal for interactive logins only
	TTYForce            // -t, for interactive commands such as an agent TUI
	TTYNone             // -T, for piping data through a command
)

// SSHOpts describes one ssh invocation into a VM.
type SSHOpts struct {
	User           string // default "root"
	Host           string // default "127.0.0.1"
	Port           int    // default 22
	KeyFile        string // banger's client key (EnsureClientKey)
	KnownHostsFile string // the VM's pinned known_hosts (WriteKnownHosts)
	HostKeyAlias   string // the alias the known_hosts line was written for
	TTY            TTY
	// Command runs instead of a login shell. ssh joins it with spaces
	// and the guest's shell parses it, so quote arguments accordingly.
	Command []string
}

// SSHArgs returns the arguments for OpenSSH's ssh, without the program
// name: exec.Command("ssh", SSHArgs(o)...). Host keys are always checked
// strictly against the pinned file and never learnt, and the user's own
// agent, keys and known hosts are kept out of it, so what connects is
// exactly the VM banger created.
func SSHArgs(opts SSHOpts) []string {
	user := opts.User
	if user == "" {
		user = "root"
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		port = 22
	}
	args := []string{
		"-l", user,
		"-p", strconv.Itoa(port),
		"-i", opts.KeyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "PreferredAuthentications=publickey",
		"-o", "HostKeyAlias=" + opts.HostKeyAlias,
		"-o", "UserKnownHostsFile=" + opts.KnownHostsFile,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		// Forwarded ports on 127.0.0.1 are reused by other VMs; the IP
		// says nothing about identity, and the pinned file must not grow.
		"-o", "CheckHostIP=no",
		"-o", "UpdateHostKeys=no",
		"-o", "LogLevel=ERROR",
	}
	switch opts.TTY {
	case TTYForce:
		args = append(args, "-t")
	case TTYNone:
		args = append(args, "-T")
	}
	args = append(args, host)
	if len(opts.Command) > 0 {
		args = append(args, "--")
		args = append(args, opts.Command...)
	}
	return args
}
