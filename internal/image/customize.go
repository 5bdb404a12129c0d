package image

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
)

// Customize turns a freshly bootstrapped Debian tree into a banger guest.
// It works on the directory only (no chroot), so it is testable on any
// tree, and only through an os.Root: a link in the tree (etc/ssh ->
// /etc/ssh) can never make it touch a host file.
func Customize(dir string) error {
	root, err := OpenTree(dir)
	if err != nil {
		return err
	}
	defer root.Close()

	// Identity is per VM: no baked SSH host keys, no machine-id. An empty
	// machine-id makes systemd generate a transient one at every boot.
	if err := removeHostKeys(root); err != nil {
		return err
	}
	if err := removeTree(root, "var/lib/dbus/machine-id"); err != nil {
		return err
	}

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
	if err := root.MkdirAll("run/banger/seed", 0o755); err != nil {
		return treeErr(err, "run/banger/seed")
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
		if err := symlinkTree(root, target, link); err != nil {
			return fmt.Errorf("link %s: %w", link, err)
		}
	}
	// Drop the wants of masked units so systemd does not warn about them.
	// Only real *.wants directories: a link there is not this tree's.
	units, err := readTreeDir(root, "etc/systemd/system")
	if err != nil {
		return err
	}
	for _, wants := range units {
		rel := "etc/systemd/system/" + wants
		if fi, err := root.Lstat(rel); err != nil || !fi.IsDir() || !strings.HasSuffix(wants, ".wants") {
			continue
		}
		for link, target := range enable {
			if target != "/dev/null" {
				continue
			}
			if err := removeTree(root, rel+"/"+path.Base(link)); err != nil {
				return err
			}
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

// writeGuestFiles writes files into the tree, replacing whatever was at
// each path (resolv.conf may be a dangling symlink) without following it.
func writeGuestFiles(root *os.Root, files []guestFileSpec) error {
	for _, f := range files {
		if err := writeTreeFile(root, f.rel, []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.rel, err)
		}
	}
	return nil
}

// removeHostKeys drops SSH host keys baked into a tree: identity is per
// VM, delivered on its seed disk.
func removeHostKeys(root *os.Root) error {
	names, err := readTreeDir(root, "etc/ssh")
	if err != nil {
		return fmt.Errorf("remove baked host keys: %w", err)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "ssh_host_") {
			continue
		}
		if err := removeTree(root, "etc/ssh/"+n); err != nil {
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

// WorkSeedFingerprint hashes a work seed tree: every path, mode, symlink
// target and file content, in a fixed order. A missing tree hashes as
// the empty seed, so "no seed" is a fingerprint too. The tree is read
// through an os.Root and a seed that is a link is refused: nothing
// outside the seed is ever read.
func WorkSeedFingerprint(dir string) (string, error) {
	h := sha256.New()
	root, err := OpenTree(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	if err != nil {
		return "", fmt.Errorf("fingerprint work seed: %w", err)
	}
	defer root.Close()
	// The format is stored on every work disk: keep it byte for byte.
	err = fs.WalkDir(root.FS(), ".", func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return treeErr(err, p)
		}
		info, err := root.Lstat(p)
		if err != nil {
			return treeErr(err, p)
		}
		fmt.Fprintf(h, "%s\x00%o\x00", p, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := root.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\x00", l)
		case info.Mode().IsRegular():
			data, err := readTreeFile(root, p)
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
