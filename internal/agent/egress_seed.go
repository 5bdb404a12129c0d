package agent

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/bangerdev/banger/internal/agentapi"
)

// Files of the guest side of the egress gateway, relative to the root.
const (
	// EgressCACert is the broker CA in the Debian trust store's input
	// directory; update-ca-certificates adds it to the bundle.
	EgressCACert = "usr/local/share/ca-certificates/banger-egress.crt"
	// etcEnvironment is read by pam_env at every login (ssh, su).
	etcEnvironment = "etc/environment"
	// egressDropIn gives opencode.service the same environment.
	egressDropIn = "run/systemd/system/opencode.service.d/60-banger-egress.conf"
)

// The lines banger writes into /etc/environment sit between these
// markers, so that a later boot can replace or remove them and leave the
// rest alone.
const (
	envBegin = "# BEGIN banger egress (written by banger-agent init at every boot)"
	envEnd   = "# END banger egress"
)

// envName is a portable environment variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// envValueSafe is what a value may hold to be written unquoted in
// /etc/environment (pam_env) and in a systemd EnvironmentFile alike.
var envValueSafe = regexp.MustCompile(`^[A-Za-z0-9._~+/=:@%,-]*$`)

// EgressEnv is the environment the seed's egress settings give every
// command: NODE_EXTRA_CA_CERTS naming the broker CA (Node and Bun do not
// read the system store) and the seed's Env (API-key placeholders).
// Names or values that could not be written safely are left out.
func EgressEnv(eg *agentapi.SeedEgress) (map[string]string, error) {
	env := map[string]string{}
	if eg == nil {
		return env, nil
	}
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(eg.Env)) {
		v := eg.Env[k]
		if !envName.MatchString(k) {
			errs = append(errs, fmt.Errorf("egress env: invalid name %q", k))
			continue
		}
		if !envValueSafe.MatchString(v) {
			// Do not quote the value: it may be a secret.
			errs = append(errs, fmt.Errorf("egress env %s: value has characters that cannot be written", k))
			continue
		}
		env[k] = v
	}
	if eg.CACert != "" {
		env["NODE_EXTRA_CA_CERTS"] = "/" + EgressCACert
	}
	return env, errors.Join(errs...)
}

// SetEgressEnv adds env to what every exec and session command starts
// from. Call it before serving.
func SetEgressEnv(env map[string]string) {
	maps.Copy(baseEnv, env)
}

// ReadSeedConfig reads the seed config at path.
func ReadSeedConfig(path string) (agentapi.SeedConfig, error) {
	return readSeed(path)
}

// applyEgressSeed applies the seed's egress settings at boot, and undoes
// those of an earlier boot when the seed has none: the CA in the trust
// store, the environment in /etc/environment and opencode's unit, and
// the nftables redirect.
func applyEgressSeed(opts InitOptions, eg *agentapi.SeedEgress) error {
	var errs []error
	env, err := EgressEnv(eg)
	errs = append(errs, err)
	ca := ""
	if eg != nil {
		ca = eg.CACert
	}
	errs = append(errs, installEgressCA(opts, ca))
	errs = append(errs, writeEtcEnvironment(opts.Root, env))
	errs = append(errs, egressOpencodeEnv(opts, len(env) > 0))
	if eg != nil && eg.Gateway {
		if opts.ApplyEgressRules != nil {
			if err := opts.ApplyEgressRules(); err != nil {
				errs = append(errs, err)
			} else {
				opts.Log.Info("egress redirect programmed", "table", "inet "+EgressTable)
			}
		}
	}
	return errors.Join(errs...)
}

// installEgressCA writes (or, when pemCert is empty, removes) the broker
// CA and refreshes the trust store when that changed anything.
func installEgressCA(opts InitOptions, pemCert string) error {
	p := filepath.Join(opts.Root, EgressCACert)
	old, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read egress CA: %w", err)
	}
	if pemCert == "" {
		if err != nil {
			return nil
		}
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove egress CA: %w", err)
		}
	} else {
		blk, _ := pem.Decode([]byte(pemCert))
		if blk == nil || blk.Type != "CERTIFICATE" {
			return errors.New("egress CA in seed config is not a PEM certificate")
		}
		if bytes.Equal(old, []byte(pemCert)) {
			return nil
		}
		if err := writeFile(opts.Root, EgressCACert, []byte(pemCert), 0o644); err != nil {
			return err
		}
	}
	if opts.UpdateCACerts == nil {
		return nil
	}
	return opts.UpdateCACerts()
}

// updateCACerts rebuilds /etc/ssl/certs from the trust store's inputs.
func updateCACerts() error {
	out, err := exec.Command("update-ca-certificates").CombinedOutput()
	if err != nil {
		return fmt.Errorf("update-ca-certificates: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// writeEtcEnvironment replaces banger's block of /etc/environment with
// env (none: the block goes), keeping every other line.
func writeEtcEnvironment(root string, env map[string]string) error {
	old, err := os.ReadFile(filepath.Join(root, etcEnvironment))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read /etc/environment: %w", err)
	}
	next := environmentWithBlock(old, env)
	if bytes.Equal(old, next) {
		return nil
	}
	return writeFile(root, etcEnvironment, next, 0o644)
}

// environmentWithBlock is old without banger's block, plus a new block
// holding env (sorted) when env is not empty.
func environmentWithBlock(old []byte, env map[string]string) []byte {
	var out []string
	in := false
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		switch {
		case l == envBegin:
			in = true
		case l == envEnd:
			in = false
		case !in && l != "":
			out = append(out, l)
		}
	}
	if len(env) > 0 {
		out = append(out, envBegin)
		for _, k := range slices.Sorted(maps.Keys(env)) {
			out = append(out, k+"="+env[k])
		}
		out = append(out, envEnd)
	}
	if len(out) == 0 {
		return nil
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

// egressOpencodeEnv gives opencode.service /etc/environment (where the
// egress variables are) through a runtime drop-in, or removes it.
func egressOpencodeEnv(opts InitOptions, want bool) error {
	if _, err := os.Stat(filepath.Join(opts.Root, opencodeUnit)); err != nil {
		return nil
	}
	p := filepath.Join(opts.Root, egressDropIn)
	_, err := os.Stat(p)
	have := err == nil
	if want == have {
		return nil
	}
	if want {
		conf := "# Written by banger-agent init: the egress gateway's CA and placeholders.\n" +
			"[Service]\nEnvironmentFile=-/" + etcEnvironment + "\n"
		if err := writeFile(opts.Root, egressDropIn, []byte(conf), 0o644); err != nil {
			return err
		}
	} else if err := os.Remove(p); err != nil {
		return fmt.Errorf("remove opencode egress drop-in: %w", err)
	}
	if opts.ReloadSystemd == nil {
		return nil
	}
	if err := opts.ReloadSystemd(); err != nil {
		return fmt.Errorf("reload systemd for opencode's egress environment: %w", err)
	}
	return nil
}
