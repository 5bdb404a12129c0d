package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/agentapi"
)

// Home is root's home directory inside the guest: the VM's work disk.
const Home = "root"

// maxAuthFileBytes bounds one auth file; credentials are a few KiB.
const maxAuthFileBytes = 1 << 20

// skeletonMarkers are names that only a home directory holds; a nested
// /root/root carrying one of them is a home directory left by an older
// layout, not a user's directory that happens to be called "root".
var skeletonMarkers = []string{".bashrc", ".profile", ".ssh"}

// bashrcSources are where a missing ~/.bashrc is restored from, in order:
// Debian's root default, then the generic skeleton.
var bashrcSources = []string{"usr/share/base-files/dot.bashrc", "etc/skel/.bashrc"}

var profileSources = []string{"usr/share/base-files/dot.profile", "etc/skel/.profile"}

// fallbackBashrc is used when the image has neither source.
const fallbackBashrc = `# ~/.bashrc: restored by banger-agent.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PS1='\u@\h:\w\$ '
`

// RepairHome runs at every boot, before the VM's identity is applied. It
// merges a stale nested layout (/root/root holding a home directory) back
// into /root and keeps the parts sshd and a login shell need sane: /root
// and ~/.ssh owned by root and private, a non-empty ~/.bashrc and
// ~/.profile. It returns what it changed, for the boot log.
func RepairHome(root string) ([]string, error) {
	home := filepath.Join(root, Home)
	var changed []string
	var errs []error
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("create /root: %w", err)
	}
	if msg, err := mergeNestedHome(home); err != nil {
		errs = append(errs, err)
	} else if msg != "" {
		changed = append(changed, msg)
	}
	if err := fixOwnerMode(home, 0o700); err != nil {
		errs = append(errs, err)
	}
	ssh := filepath.Join(home, ".ssh")
	if st, err := os.Lstat(ssh); err == nil && !st.IsDir() {
		aside := ssh + ".broken-" + time.Now().UTC().Format("20060102T150405")
		if err := os.Rename(ssh, aside); err != nil {
			errs = append(errs, fmt.Errorf("move aside /root/.ssh: %w", err))
		} else {
			changed = append(changed, "moved a non-directory /root/.ssh to "+strings.TrimPrefix(aside, root))
		}
	}
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		errs = append(errs, fmt.Errorf("create /root/.ssh: %w", err))
	} else if err := fixOwnerMode(ssh, 0o700); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct {
		name     string
		sources  []string
		fallback string
	}{
		{".bashrc", bashrcSources, fallbackBashrc},
		{".profile", profileSources, "if [ -f ~/.bashrc ]; then . ~/.bashrc; fi\n"},
	} {
		restored, err := restoreDotfile(root, f.name, f.sources, f.fallback)
		if err != nil {
			errs = append(errs, err)
		} else if restored {
			changed = append(changed, "restored /root/"+f.name)
		}
	}
	return changed, errors.Join(errs...)
}

// mergeNestedHome moves the entries of a stale /root/root up into /root.
// An entry that exists in both places keeps the top-level one; the nested
// copies left over are kept, renamed, rather than deleted.
func mergeNestedHome(home string) (string, error) {
	nested := filepath.Join(home, "root")
	st, err := os.Lstat(nested)
	if err != nil || !st.IsDir() {
		return "", nil
	}
	entries, err := os.ReadDir(nested)
	if err != nil {
		return "", fmt.Errorf("read /root/root: %w", err)
	}
	stale := false
	for _, e := range entries {
		for _, m := range skeletonMarkers {
			if e.Name() == m {
				stale = true
			}
		}
	}
	if !stale {
		return "", nil
	}
	moved, kept := 0, 0
	for _, e := range entries {
		dst := filepath.Join(home, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			kept++
			continue
		}
		if err := os.Rename(filepath.Join(nested, e.Name()), dst); err != nil {
			return "", fmt.Errorf("move /root/root/%s up: %w", e.Name(), err)
		}
		moved++
	}
	if kept == 0 {
		if err := os.Remove(nested); err != nil {
			return "", fmt.Errorf("remove empty /root/root: %w", err)
		}
		return fmt.Sprintf("merged a stale /root/root into /root (%d entries)", moved), nil
	}
	aside := filepath.Join(home, ".stale-root-"+time.Now().UTC().Format("20060102T150405"))
	if err := os.Rename(nested, aside); err != nil {
		return "", fmt.Errorf("move aside /root/root: %w", err)
	}
	return fmt.Sprintf("merged a stale /root/root into /root (%d entries; %d that clashed kept in %s)", moved, kept, "/root/"+filepath.Base(aside)), nil
}

func fixOwnerMode(p string, mode fs.FileMode) error {
	if err := os.Lchown(p, 0, 0); err != nil && !errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("chown %s: %w", p, err)
	}
	if err := os.Chmod(p, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", p, err)
	}
	return nil
}

// restoreDotfile writes /root/name from the first source that exists when
// it is missing, empty or a dangling link. A user's own non-empty file is
// never touched.
func restoreDotfile(root, name string, sources []string, fallback string) (bool, error) {
	p := filepath.Join(root, Home, name)
	if st, err := os.Stat(p); err == nil && (st.Size() > 0 || !st.Mode().IsRegular()) {
		return false, nil
	}
	data := []byte(fallback)
	for _, s := range sources {
		if b, err := os.ReadFile(filepath.Join(root, s)); err == nil && len(b) > 0 {
			data = b
			break
		}
	}
	_ = os.Remove(p) // a dangling symlink
	if err := writeFile(root, path.Join(Home, name), data, 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// ValidAuthPath reports whether p may name an auth file under /root: a
// relative, clean path that stays inside the home directory.
func ValidAuthPath(p string) bool {
	return p != "" && filepath.IsLocal(p) && filepath.Clean(p) == p && !strings.HasPrefix(p, ".ssh/")
}

// writeAuthFiles writes each auth file under /root with mode 0600,
// creating missing parent directories 0700. Writes go through os.Root so
// a symlink in the work disk cannot redirect them outside /root. Errors
// name paths only, never contents.
func writeAuthFiles(root string, files []agentapi.SeedFile, log *slog.Logger) error {
	if len(files) == 0 {
		return nil
	}
	r, err := os.OpenRoot(filepath.Join(root, Home))
	if err != nil {
		return fmt.Errorf("open /root: %w", err)
	}
	defer r.Close()
	var errs []error
	var written []string
	for _, f := range files {
		if !ValidAuthPath(f.Path) {
			errs = append(errs, fmt.Errorf("auth file %q: path must be relative and inside /root", f.Path))
			continue
		}
		if len(f.Data) > maxAuthFileBytes {
			errs = append(errs, fmt.Errorf("auth file %s: larger than %d bytes", f.Path, maxAuthFileBytes))
			continue
		}
		if dir := filepath.Dir(f.Path); dir != "." {
			if err := r.MkdirAll(dir, 0o700); err != nil {
				errs = append(errs, fmt.Errorf("auth file %s: create directory: %w", f.Path, err))
				continue
			}
		}
		if err := writeRootFile(r, f.Path, f.Data); err != nil {
			errs = append(errs, fmt.Errorf("auth file %s: %w", f.Path, err))
			continue
		}
		written = append(written, f.Path)
	}
	if len(written) > 0 {
		log.Info("auth files written", "files", written)
	}
	return errors.Join(errs...)
}

// writeRootFile replaces rel inside r atomically with mode 0600.
func writeRootFile(r *os.Root, rel string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(rel), "."+filepath.Base(rel)+".banger-tmp")
	_ = r.Remove(tmp)
	f, err := r.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	defer r.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("chmod: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	if err := r.Rename(tmp, rel); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	return nil
}
