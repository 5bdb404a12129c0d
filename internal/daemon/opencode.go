package daemon

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/store"
)

// Each VM's opencode server asks for its own random password (HTTP basic
// auth, user "opencode"). Without one, any local user, or another VM
// through slirp's 10.0.2.2 or across the bridge, could drive opencode:
// run commands in the VM and read its tokens.
const (
	// fileOpencodePassword holds the password in the VM directory (0600,
	// like the SSH host key next to it).
	fileOpencodePassword = "opencode-password"
	// seedOpencodeEnv is the systemd EnvironmentFile on the seed disk
	// that opencode.service reads (0600: only the guest's root reads it).
	seedOpencodeEnv = agentapi.SeedOpencodeEnv
	// opencodePasswordBytes of randomness: 192 bits.
	opencodePasswordBytes = 24
)

// newOpencodePassword returns a random password that is safe unquoted in
// a systemd EnvironmentFile, a shell and a URL (base64url, no padding).
func newOpencodePassword() (string, error) {
	b := make([]byte, opencodePasswordBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate opencode password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// validOpencodePassword accepts what newOpencodePassword makes: a file
// edited into something else must not smuggle a newline (a second
// variable) into the EnvironmentFile.
func validOpencodePassword(pw string) bool {
	if len(pw) < 16 || len(pw) > 128 {
		return false
	}
	return strings.IndexFunc(pw, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) < 0
}

// ensureOpencodePassword returns the VM's password, creating it (0600,
// never replacing an existing one) on the VM's first boot. VMs made
// before passwords existed get one at their next boot.
func ensureOpencodePassword(dir string) (string, error) {
	pw, err := readOpencodePassword(dir)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return pw, err
	}
	pw, err = newOpencodePassword()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, fileOpencodePassword)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create opencode password: %w", err)
	}
	if _, err := f.WriteString(pw + "\n"); err != nil {
		f.Close()
		os.Remove(p)
		return "", fmt.Errorf("write opencode password: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(p)
		return "", fmt.Errorf("write opencode password: %w", err)
	}
	return pw, nil
}

// readOpencodePassword reads the VM's password; fs.ErrNotExist when the VM
// has never booted with one.
func readOpencodePassword(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, fileOpencodePassword))
	if err != nil {
		return "", err
	}
	pw := strings.TrimSpace(string(b))
	if !validOpencodePassword(pw) {
		// Never quote the file: it is a secret, even when malformed.
		return "", fmt.Errorf("opencode password file %s is malformed; delete it and restart the VM to get a new one", filepath.Join(dir, fileOpencodePassword))
	}
	return pw, nil
}

// opencodeEnv is the EnvironmentFile that opencode.service reads from the
// seed disk.
func opencodeEnv(pw string) []byte {
	return []byte("OPENCODE_SERVER_PASSWORD=" + pw + "\n")
}

// opencodeView is how the owner reaches the VM's opencode server, or nil
// when the image serves none. The password is left out (see
// api.Opencode.Password).
func opencodeView(vm api.VM, manifest string) *api.Opencode {
	if !image.HasService(manifest, image.ServiceOpencode) {
		return nil
	}
	host := vm.Address
	if host == "" {
		for _, p := range vm.Ports {
			if p.GuestPort == guestOpencodePort {
				host = "127.0.0.1:" + strconv.Itoa(p.HostPort)
			}
		}
	} else {
		host += ":" + strconv.Itoa(guestOpencodePort)
	}
	if host == "" {
		return nil
	}
	return &api.Opencode{URL: "http://" + host, Username: api.OpencodeUsername}
}

// withOpencodePassword adds the password to a VM view for its owner
// (GET /v1/vms/{name}); a VM that has not booted since passwords exist
// has none yet. Only a running VM's: while it is not running its
// forwarded port is free, and whoever listens there would collect the
// password from the owner's `opencode attach`.
func (d *Daemon) withOpencodePassword(out *api.VM, vm store.VM) {
	if out.Opencode == nil || vm.State != api.VMRunning {
		return
	}
	pw, err := readOpencodePassword(vm.Dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("opencode password unreadable", "vm", vm.Name, "err", err)
		}
		return
	}
	out.Opencode.Password = pw
}

// checkOpencodeAuth warns when opencode answers a request without the
// password: the image's opencode.service predates per-VM passwords and
// the agent could not add one (see internal/agent opencode.go).
func (d *Daemon) checkOpencodeAuth(ctx context.Context, hc *http.Client, url string, vm store.VM) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := hc.Do(req)
	if err != nil {
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		d.log.Warn("opencode answers without a password; rebuild the image with `banger image build`", "vm", vm.Name, "status", resp.StatusCode)
	}
}
