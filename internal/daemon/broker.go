package daemon

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/egress"
	"github.com/bangerdev/banger/internal/egress/broker"
	"github.com/bangerdev/banger/internal/store"
)

const (
	// dirBrokerCA holds the instance's broker CA (key and certificate,
	// 0600), under the data dir.
	dirBrokerCA = "egress-ca"
	// fileBrokerSecrets, in a VM's dir, maps the VM's placeholders to
	// where the real values live on the host (never the values), so a
	// reboot reseeds the same placeholders.
	fileBrokerSecrets = "broker-secrets.json"
)

// credentialBroker is the daemon's side of the credential broker: the
// instance CA, the Broker the egress gateway calls, and each VM's
// persisted placeholders.
type credentialBroker struct {
	ca  *broker.CA
	b   *broker.Broker
	log *slog.Logger
}

// newCredentialBroker loads or creates the instance CA under dataDir.
// rootCAs verify the upstreams (system roots + egress.upstream_ca_file).
func newCredentialBroker(dataDir string, rootCAs *x509.CertPool, log *slog.Logger) (*credentialBroker, error) {
	ca, err := broker.LoadOrCreateCA(filepath.Join(dataDir, dirBrokerCA))
	if err != nil {
		return nil, fmt.Errorf("credential broker: %w", err)
	}
	return &credentialBroker{
		ca:  ca,
		b:   broker.New(broker.Options{CA: ca, RootCAs: rootCAs, Log: log}),
		log: log,
	}, nil
}

// Interceptor is the gateway's hook (egress.Options.Broker).
func (cb *credentialBroker) Interceptor() egress.Interceptor { return cb.b }

// credentialSeed is what a VM's seed config gets for its credentials.
type credentialSeed struct {
	// Files go to SeedConfig.AuthFiles; Synced names them for
	// vm.AuthSyncedJSON.
	Files  []agentapi.SeedFile
	Synced []string
	// Env goes to SeedEgress.Env; CACert to SeedEgress.CACert (empty
	// unless something is brokered).
	Env    map[string]string
	CACert string
	// Brokered names the brokered credentials (vm show), never values.
	Brokered []string
}

// seedCredentials builds a VM's credentials under mode:
//   - broker: the auth files and env keys with placeholders (files the
//     broker cannot parse are NOT copied; the warning names them), the
//     placeholders persisted in the VM dir and registered with the broker;
//   - copy: the files and env values as they are on the host (the old way);
//   - none: nothing.
//
// files come from collectAuthFiles, env from collectAuthEnv; home is the
// directory the files' paths are relative to.
func (cb *credentialBroker) seedCredentials(vm egress.VMRef, vmDir, mode, home string, files []agentapi.SeedFile, env map[string]string) (credentialSeed, error) {
	var out credentialSeed
	secretsPath := filepath.Join(vmDir, fileBrokerSecrets)
	if mode != config.CredentialsBroker {
		cb.forget(vm, vmDir)
	}
	switch mode {
	case config.CredentialsNone:
		return out, nil
	case config.CredentialsCopy:
		out.Files, out.Env = files, env
		for _, f := range files {
			out.Synced = append(out.Synced, f.Path)
		}
		return out, nil
	case config.CredentialsBroker:
	default:
		return out, fmt.Errorf("unknown credentials mode %q", mode)
	}
	prev, err := broker.LoadSecrets(secretsPath)
	if err != nil {
		// Fresh placeholders are better than no boot: the guest is
		// reseeded with the new ones anyway.
		cb.log.Warn("broker placeholders unreadable, making new ones", "vm", vm.Name, "err", err)
		prev = nil
	}
	r, err := broker.Rewrite(home, files, env, prev)
	if err != nil {
		return out, fmt.Errorf("broker credentials: %w", err)
	}
	if len(r.Skipped) > 0 {
		cb.log.Warn("credentials the broker cannot broker were not given to the VM", "vm", vm.Name, "skipped", r.Skipped)
	}
	if err := broker.SaveSecrets(secretsPath, r.Secrets); err != nil {
		return out, fmt.Errorf("broker credentials: %w", err)
	}
	cb.b.SetVM(vm, r.Secrets)
	out.Files, out.Env = r.Files, r.Env
	for _, f := range r.Files {
		out.Synced = append(out.Synced, f.Path)
	}
	out.Brokered = r.Secrets.Names()
	if len(out.Brokered) > 0 {
		out.CACert = string(cb.ca.CertPEM())
	}
	return out, nil
}

// restoreVM registers a VM's persisted placeholders with the broker;
// call it for every VM with credentials broker when the daemon starts
// (its guest still holds the placeholders of its last boot).
func (cb *credentialBroker) restoreVM(vm egress.VMRef, vmDir string) {
	s, err := broker.LoadSecrets(filepath.Join(vmDir, fileBrokerSecrets))
	if err != nil {
		cb.log.Warn("broker placeholders unreadable; the VM's brokered credentials fail until it is restarted", "vm", vm.Name, "err", err)
		return
	}
	cb.b.SetVM(vm, s)
}

// forget drops a VM from the broker and removes its placeholder file
// (deleted VM, or a mode that is not broker).
func (cb *credentialBroker) forget(vm egress.VMRef, vmDir string) {
	cb.b.RemoveVM(vm)
	if err := os.Remove(filepath.Join(vmDir, fileBrokerSecrets)); err != nil && !errors.Is(err, os.ErrNotExist) {
		cb.log.Warn("remove broker placeholders", "vm", vm.Name, "err", err)
	}
}

// brokeredCredentials names what the broker holds for a VM, for vm show
// (api.VM.BrokeredCredentials): files and JSON entries or env:NAME, never
// values. It reads the VM dir, so it works for stopped VMs too.
func brokeredCredentials(vmDir string) []string {
	s, err := broker.LoadSecrets(filepath.Join(vmDir, fileBrokerSecrets))
	if err != nil {
		return nil
	}
	return s.Names()
}

// brokerRef is the broker's name for a stored VM.
func brokerRef(vm *store.VM) egress.VMRef { return egress.VMRef{ID: vm.ID, Name: vm.Name} }

// authSeed is what makeSeedDisk calls for a VM's credentials: it reads
// the host's auth files and env keys and hands them to cb under mode
// (vm.Credentials; envNames is config credentials.env). Without a broker
// (nil cb: its CA could not be loaded) mode broker gives the VM nothing
// rather than the real secrets.
func (d *Daemon) authSeed(cb *credentialBroker, vm *store.VM, mode string, envNames []string) (credentialSeed, error) {
	if mode == config.CredentialsNone || (mode == config.CredentialsBroker && cb == nil) {
		if cb != nil {
			cb.forget(brokerRef(vm), vm.Dir)
		} else if mode == config.CredentialsBroker {
			d.log.Warn("credential broker unavailable: no credentials given to the VM", "vm", vm.Name)
		}
		return credentialSeed{}, nil
	}
	files, _ := d.collectAuthFiles(vm.Name)
	env := collectAuthEnv(envNames)
	if cb == nil { // mode copy
		out := credentialSeed{Files: files, Env: env}
		for _, f := range files {
			out.Synced = append(out.Synced, f.Path)
		}
		return out, nil
	}
	home := ""
	if len(files) > 0 {
		h, err := d.authHome()
		if err != nil {
			return credentialSeed{}, err
		}
		home = h
	}
	return cb.seedCredentials(brokerRef(vm), vm.Dir, mode, home, files, env)
}
