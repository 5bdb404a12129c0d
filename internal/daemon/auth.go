package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bangerdev/banger/internal/agentapi"
)

// maxAuthFileBytes bounds one auth file; credentials are a few KiB, and
// the whole seed config is read into memory by the guest.
const maxAuthFileBytes = 1 << 20

// authHome is the directory the configured auth files are relative to.
func (d *Daemon) authHome() (string, error) {
	if d.cfg.Auth.Home != "" {
		return d.cfg.Auth.Home, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("auth files: find the home directory (set auth.home in the config): %w", err)
	}
	return home, nil
}

// collectAuthFiles reads the configured auth files of the user the daemon
// serves. Missing files are skipped with one info line for the whole set;
// an unreadable or oversized file is skipped with a warning. Nothing here
// ever logs or returns a file's contents in an error.
func (d *Daemon) collectAuthFiles(vmName string) ([]agentapi.SeedFile, []string) {
	if len(d.cfg.Auth.Files) == 0 {
		return nil, nil
	}
	home, err := d.authHome()
	if err != nil {
		d.log.Warn("auth files not synced", "vm", vmName, "err", err)
		return nil, nil
	}
	var files []agentapi.SeedFile
	var names, missing []string
	for _, rel := range d.cfg.Auth.Files {
		data, err := readAuthFile(filepath.Join(home, rel))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, rel)
		case err != nil:
			d.log.Warn("auth file skipped", "vm", vmName, "file", rel, "err", err)
		default:
			files = append(files, agentapi.SeedFile{Path: rel, Data: data})
			names = append(names, rel)
		}
	}
	if len(missing) > 0 {
		d.log.Info("auth files not found on the host, skipped", "vm", vmName, "home", home, "files", missing)
	}
	return files, names
}

// collectAuthEnv reads the configured API-key variables (config
// credentials.env) from the daemon's environment; unset ones are left
// out. The values are secrets: never log them.
func collectAuthEnv(names []string) map[string]string {
	var env map[string]string
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			if env == nil {
				env = map[string]string{}
			}
			env[n] = v
		}
	}
	return env
}

// readAuthFile reads a regular file of at most maxAuthFileBytes; errors
// name the path only.
func readAuthFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxAuthFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(data) > maxAuthFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, maxAuthFileBytes)
	}
	return data, nil
}

func encodeNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	b, _ := json.Marshal(names)
	return string(b)
}

func decodeNames(s string) []string {
	var out []string
	if s != "" {
		_ = json.Unmarshal([]byte(s), &out)
	}
	return out
}
