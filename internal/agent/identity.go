package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/httpjson"
)

// maxCreditedEntropy caps the host randomness mixed in per request: the
// kernel's pool holds 256 bits, so more bytes buy nothing but a bigger
// ioctl. Bytes beyond it are ignored (the reply says how many counted).
const maxCreditedEntropy = 512

// machineIDFile is systemd's machine id, relative to the root.
const machineIDFile = "etc/machine-id"

// identitySys is what applying an identity does to the running guest
// beyond writing files under root; tests replace each part.
type identitySys struct {
	// root prefixes every file written ("/" in the guest).
	root        string
	setHostname func(name string) error
	setClock    func(unixNano int64) error
	// addEntropy mixes b into the kernel RNG and reports whether the
	// kernel credited it (false: mixed in only, with why).
	addEntropy func(b []byte) (credited bool, why error, err error)
	// restartSSH makes sshd serve the host keys now on disk.
	restartSSH func(ctx context.Context) error
	// resetConnections drops the guest's established TCP connections
	// to other machines; skipped (with why) when the guest has no way to.
	resetConnections func(ctx context.Context) (n int, skipped string, err error)
}

// identityStep is one named part of applying an identity; do returns
// the line for the reply.
type identityStep struct {
	name string
	do   func(ctx context.Context) (string, error)
}

// handleIdentity makes a guest restored from a snapshot a new machine
// (agentapi.AgentIdentityPath). The whole request is checked before
// anything changes, so a bad one is a 400 that leaves the guest as it
// was; then the steps run in order and the first failure ends the
// request with a 500 naming the step and what was already done.
func (s *Server) handleIdentity(w http.ResponseWriter, r *http.Request) {
	req, err := DecodeIdentityRequest(http.MaxBytesReader(w, r.Body, agentapi.MaxIdentityBody))
	if err != nil {
		httpjson.WriteError(w, err)
		return
	}
	// Two identities applied at once would interleave host names and keys.
	s.identityMu.Lock()
	defer s.identityMu.Unlock()
	reply, err := s.applyIdentity(r.Context(), req)
	if err != nil {
		s.log.Error("identity", "err", err, "done", reply.Done)
		httpjson.WriteError(w, api.Errorf(api.CodeInternal, "the guest's identity is half applied: discard this VM", "%s", err.Error()))
		return
	}
	s.log.Info("identity applied", "done", reply.Done)
	httpjson.WriteJSON(w, http.StatusOK, reply)
}

// DecodeIdentityRequest reads one IdentityRequest strictly (unknown
// fields are refused: a field this agent does not know could be a part
// of the identity it would silently leave shared with the snapshot's
// other VMs) and validates it. Errors are invalid-input *api.Error
// values that never quote a key or an auth file's content.
func DecodeIdentityRequest(r io.Reader) (agentapi.IdentityRequest, error) {
	var req agentapi.IdentityRequest
	if err := httpjson.Decode(r, &req); err != nil {
		return agentapi.IdentityRequest{}, err
	}
	if err := validateIdentity(req); err != nil {
		return agentapi.IdentityRequest{}, api.Errorf(api.CodeInvalid, "", "identity request: %s", err.Error())
	}
	return req, nil
}

func validateIdentity(req agentapi.IdentityRequest) error {
	var errs []error
	if req.Hostname != "" && !validHostname(req.Hostname) {
		errs = append(errs, fmt.Errorf("invalid host name %q", req.Hostname))
	}
	for typ, key := range req.SSHHostKeys {
		if _, err := parseHostKey(typ, key); err != nil {
			errs = append(errs, err)
		}
	}
	if req.MachineID != "" && !validMachineID(req.MachineID) {
		errs = append(errs, errors.New("machine id must be 32 lowercase hex digits, not all zero"))
	}
	if req.UnixNano < 0 {
		errs = append(errs, fmt.Errorf("clock %d is before 1970", req.UnixNano))
	}
	for _, f := range req.AuthFiles {
		if !ValidAuthPath(f.Path) {
			errs = append(errs, fmt.Errorf("auth file %q: path must be relative and inside /root", f.Path))
		} else if len(f.Data) > maxAuthFileBytes {
			errs = append(errs, fmt.Errorf("auth file %s: larger than %d bytes", f.Path, maxAuthFileBytes))
		}
	}
	return errors.Join(errs...)
}

// validMachineID is systemd's format: 32 lowercase hex digits; all zero
// is its "no id" value.
func validMachineID(id string) bool {
	if len(id) != 32 || id == strings.Repeat("0", 32) {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// applyIdentity runs the steps req asks for, in order: the clock first
// (every later file and log line is stamped), then entropy (before
// anything else might draw randomness), names and keys, the credentials,
// and last the connections that belong to the machine the snapshot was
// taken of.
func (s *Server) applyIdentity(ctx context.Context, req agentapi.IdentityRequest) (agentapi.IdentityReply, error) {
	sys := s.identity
	var steps []identityStep
	if req.UnixNano != 0 {
		steps = append(steps, identityStep{"clock", func(context.Context) (string, error) {
			moved := time.Duration(req.UnixNano - time.Now().UnixNano()).Round(time.Millisecond)
			if err := sys.setClock(req.UnixNano); err != nil {
				return "", err
			}
			return fmt.Sprintf("clock set to %s (moved %s)", time.Unix(0, req.UnixNano).UTC().Format(time.RFC3339), moved), nil
		}})
	}
	if len(req.Entropy) > 0 {
		steps = append(steps, identityStep{"entropy", func(context.Context) (string, error) {
			b := req.Entropy[:min(len(req.Entropy), maxCreditedEntropy)]
			credited, why, err := sys.addEntropy(b)
			if err != nil {
				return "", err
			}
			if !credited {
				return fmt.Sprintf("entropy: %d bytes mixed in, not credited (%v)", len(b), why), nil
			}
			return fmt.Sprintf("entropy: %d bytes mixed in and credited", len(b)), nil
		}})
	}
	if req.Hostname != "" {
		steps = append(steps, identityStep{"hostname", func(context.Context) (string, error) {
			if err := applyHostname(InitOptions{Root: sys.root, SetHostname: sys.setHostname}, req.Hostname); err != nil {
				return "", err
			}
			return "hostname " + req.Hostname, nil
		}})
	}
	if req.MachineID != "" {
		steps = append(steps, identityStep{"machine-id", func(context.Context) (string, error) {
			if err := writeMachineID(sys.root, req.MachineID); err != nil {
				return "", err
			}
			// The id is private to the machine (systemd): not in the reply.
			return "machine-id set", nil
		}})
	}
	if len(req.SSHHostKeys) > 0 {
		steps = append(steps, identityStep{"ssh host keys", func(context.Context) (string, error) {
			removed, err := replaceHostKeys(sys.root, req.SSHHostKeys)
			if err != nil {
				return "", err
			}
			msg := "ssh host keys: " + strings.Join(slices.Sorted(maps.Keys(req.SSHHostKeys)), ", ")
			if len(removed) > 0 {
				msg += " (removed the snapshot's " + strings.Join(removed, ", ") + ")"
			}
			return msg, nil
		}}, identityStep{"sshd restart", func(ctx context.Context) (string, error) {
			if err := sys.restartSSH(ctx); err != nil {
				return "", err
			}
			return "sshd restarted", nil
		}})
	}
	if req.AuthFiles != nil {
		steps = append(steps, identityStep{"auth files", func(context.Context) (string, error) {
			if err := writeAuthFiles(sys.root, req.AuthFiles, s.log); err != nil {
				return "", err
			}
			return fmt.Sprintf("auth files: %d written", len(req.AuthFiles)), nil
		}})
	}
	if req.ResetConnections {
		steps = append(steps, identityStep{"connections", func(ctx context.Context) (string, error) {
			n, skipped, err := sys.resetConnections(ctx)
			if err != nil {
				return "", err
			}
			if skipped != "" {
				// Optional: a guest without the means keeps connections
				// whose peers are gone; they fail on their own at the
				// next write or keepalive, which is what a restore
				// without this step would give anyway.
				return "connections: not reset (" + skipped + ")", nil
			}
			return fmt.Sprintf("connections: %d established TCP connections reset (loopback ones kept)", n), nil
		}})
	}
	reply := agentapi.IdentityReply{Done: []string{}}
	for _, st := range steps {
		msg, err := st.do(ctx)
		if err != nil {
			if len(reply.Done) == 0 {
				return reply, fmt.Errorf("identity step %s: %w", st.name, err)
			}
			return reply, fmt.Errorf("identity step %s (after: %s): %w", st.name, strings.Join(reply.Done, "; "), err)
		}
		reply.Done = append(reply.Done, msg)
	}
	return reply, nil
}

// replaceHostKeys writes keys as boot does and removes the host keys of
// the other known types: those came with the snapshot and every VM
// restored from it holds them. It returns the types removed.
func replaceHostKeys(root string, keys map[string]string) ([]string, error) {
	if err := writeHostKeys(root, keys); err != nil {
		return nil, err
	}
	var removed []string
	for _, typ := range slices.Sorted(maps.Keys(hostKeyTypes)) {
		if _, ok := keys[typ]; ok {
			continue
		}
		name := filepath.Join(root, "etc/ssh/ssh_host_"+typ+"_key")
		had := false
		for _, p := range []string{name, name + ".pub"} {
			err := os.Remove(p)
			switch {
			case err == nil:
				had = true
			case !errors.Is(err, os.ErrNotExist):
				return removed, fmt.Errorf("remove old ssh host key %s: %w", typ, err)
			}
		}
		if had {
			removed = append(removed, typ)
		}
	}
	return removed, nil
}

// writeMachineID replaces /etc/machine-id. Atomically when it is a plain
// file; when systemd bind-mounted a transient id over it (an image's
// empty machine-id, not yet committed) a rename onto the mount point
// fails with EBUSY, and the mounted file is rewritten in place instead.
func writeMachineID(root, id string) error {
	data := []byte(id + "\n")
	err := writeFile(root, machineIDFile, data, 0o444)
	if !errors.Is(err, syscall.EBUSY) {
		return err
	}
	f, err := os.OpenFile(filepath.Join(root, machineIDFile), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("write /%s (mounted): %w", machineIDFile, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write /%s (mounted): %w", machineIDFile, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write /%s (mounted): %w", machineIDFile, err)
	}
	return nil
}
