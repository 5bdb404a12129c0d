package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/bangerdev/banger/internal/agentapi"
)

// opencode.service of the agent image reads OPENCODE_SERVER_PASSWORD
// from the seed disk (EnvironmentFile). Images built before per-VM
// passwords have a unit without it: init gives that unit a runtime
// drop-in naming the same file and has systemd reload, so the password
// guards opencode on old images as well.
const (
	opencodeUnit   = "etc/systemd/system/opencode.service"
	opencodeDropIn = "run/systemd/system/opencode.service.d/50-banger-password.conf"
	// OpencodeEnvName is the EnvironmentFile's name next to the seed config.
	OpencodeEnvName = agentapi.SeedOpencodeEnv
)

// secureOpencode adds the password drop-in when the image's opencode unit
// lacks the EnvironmentFile and the seed carries one. It runs before
// opencode starts (opencode.service is ordered after banger-init).
func secureOpencode(opts InitOptions) error {
	unit, err := os.ReadFile(filepath.Join(opts.Root, opencodeUnit))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read opencode.service: %w", err)
	}
	env := filepath.Join(filepath.Dir(opts.SeedConfig), OpencodeEnvName)
	if bytes.Contains(unit, []byte("EnvironmentFile="+env)) {
		return nil
	}
	if _, err := os.Stat(env); err != nil {
		// A seed from an older daemon: nothing to give opencode.
		return nil
	}
	conf := "# Written by banger-agent init: this image's opencode.service predates\n" +
		"# per-VM passwords.\n[Service]\nEnvironmentFile=" + env + "\n"
	if err := writeFile(opts.Root, opencodeDropIn, []byte(conf), 0o644); err != nil {
		return err
	}
	if opts.ReloadSystemd == nil {
		return nil
	}
	if err := opts.ReloadSystemd(); err != nil {
		return fmt.Errorf("reload systemd for the opencode password: %w", err)
	}
	opts.Log.Info("opencode.service given the VM's password (image predates it)")
	return nil
}

// reloadSystemd makes systemd read the drop-in; queued start jobs
// (opencode's) survive a reload.
func reloadSystemd() error {
	out, err := exec.Command("systemctl", "daemon-reload").CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl daemon-reload: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}
