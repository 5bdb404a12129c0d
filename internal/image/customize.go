package image

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Customize turns a freshly bootstrapped Debian tree into a banger guest.
// It works on the directory only (no chroot), so it is testable on any tree.
func Customize(root string) error {
	p := func(rel string) string { return filepath.Join(root, rel) }

	// Identity is per VM: no baked SSH host keys, no machine-id. An empty
	// machine-id makes systemd generate a transient one at every boot.
	if err := removeHostKeys(root); err != nil {
		return err
	}
	_ = os.Remove(p("var/lib/dbus/machine-id"))

	files := []guestFileSpec{
		{"etc/machine-id", "", 0o444},
		{"etc/hostname", "banger\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tbanger\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644},
		{"etc/fstab", guestFile("fstab"), 0o644},
		{"etc/ssh/sshd_config.d/banger.conf", guestFile("sshd-banger.conf"), 0o644},
		{"etc/systemd/system/banger-init.service", guestFile("banger-init.service"), 0o644},
		{"etc/systemd/system/banger-agent.service", guestFile("banger-agent.service"), 0o644},
		// The user-mode DNS forwarder; banger-agent init rewrites it from
		// the kernel command line when the VM has its own address.
		{"etc/resolv.conf", "nameserver 10.0.2.3\n", 0o644},
	}
	if err := writeGuestFiles(root, files); err != nil {
		return err
	}
	for _, d := range []string{"run/banger/seed"} {
		if err := os.MkdirAll(p(d), 0o755); err != nil {
			return err
		}
	}

	enable := map[string]string{
		"etc/systemd/system/sysinit.target.wants/banger-init.service":         "/etc/systemd/system/banger-init.service",
		"etc/systemd/system/multi-user.target.wants/banger-agent.service":     "/etc/systemd/system/banger-agent.service",
		"etc/systemd/system/multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service",
		"etc/systemd/system/sockets.target.wants/systemd-networkd.socket":     "/lib/systemd/system/systemd-networkd.socket",
	}
	// No background network traffic and no interactive first-boot prompts:
	// VMs are disposable and must boot unattended.
	for _, unit := range []string{
		"apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
		"apt-daily-upgrade.service", "dpkg-db-backup.timer", "e2scrub_all.timer",
		"fstrim.timer", "e2scrub_reap.service", "systemd-timesyncd.service", "systemd-firstboot.service",
		"getty@tty1.service", "systemd-networkd-wait-online.service",
	} {
		enable["etc/systemd/system/"+unit] = "/dev/null"
	}
	for link, target := range enable {
		if err := os.MkdirAll(filepath.Dir(p(link)), 0o755); err != nil {
			return err
		}
		_ = os.Remove(p(link))
		if err := os.Symlink(target, p(link)); err != nil {
			return fmt.Errorf("link %s: %w", link, err)
		}
	}
	// Drop the wants of masked units so systemd does not warn about them.
	for link, target := range enable {
		if target != "/dev/null" {
			continue
		}
		wants, _ := filepath.Glob(p("etc/systemd/system/*.wants/" + filepath.Base(link)))
		for _, w := range wants {
			_ = os.Remove(w)
		}
	}
	return nil
}

// guestFileSpec is a file Customize writes into the tree.
type guestFileSpec struct {
	rel  string
	data string
	mode fs.FileMode
}

func writeGuestFiles(root string, files []guestFileSpec) error {
	for _, f := range files {
		p := filepath.Join(root, f.rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		_ = os.Remove(p) // resolv.conf may be a dangling symlink
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.rel, err)
		}
	}
	return nil
}

// removeHostKeys drops SSH host keys baked into a tree: identity is per
// VM, delivered on its seed disk.
func removeHostKeys(root string) error {
	keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return fmt.Errorf("remove baked host key: %w", err)
		}
	}
	return nil
}

func guestFile(name string) string {
	b, err := guestFiles.ReadFile("guest/" + name)
	if err != nil {
		panic("image: missing embedded guest file " + name)
	}
	return string(b)
}

// CopyTree copies a small directory tree (the /root skeleton), keeping
// modes and symlinks.
func CopyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm())
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		}
		return nil
	})
}

// FileWorkSeedMark is written on every work disk (relative to /root): the
// fingerprint of the work seed the disk was made from.
const FileWorkSeedMark = ".banger/work-seed"

// WorkSeedFingerprint hashes a work seed tree: every path, mode, symlink
// target and file content, in a fixed order. A missing tree hashes as
// the empty seed, so "no seed" is a fingerprint too.
func WorkSeedFingerprint(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return filepath.SkipDir
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\x00", l)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%d\x00", len(data))
			h.Write(data)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("fingerprint work seed: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
