package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/bangerdev/banger/internal/system"
)

// DefaultChrootBase is the jailer's own default (docs/jailer.md).
const DefaultChrootBase = "/srv/jailer"

// JailerConfig says how the jailer isolates Firecracker (docs/jailer.md).
type JailerConfig struct {
	// Binary is the jailer executable; empty means "jailer" on PATH.
	Binary string
	// UID and GID are what Firecracker runs as inside the jail when the
	// VM has no user of its own (vmm.Spec.UID; the daemon gives every
	// jailed VM one unless [vmm] uid_range is empty). Never 0.
	UID, GID int
	// ChrootBase is where jails are built (--chroot-base-dir).
	ChrootBase string
	// CgroupVersion is "1" or "2" (empty: 2, what current distros mount).
	CgroupVersion string
	// ParentCgroup groups banger's microVMs (--parent-cgroup).
	ParentCgroup string
	// Cgroups are "<file>=<value>" settings (--cgroup), e.g. "cpu.max=...".
	Cgroups []string
}

// jailIDRe is the jailer's rule for --id: alphanumerics and hyphens, at
// most 64 characters.
var jailIDRe = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// In-jail names; the jail's root is Firecracker's "/".
const (
	jailAPISocket = "/api.sock"
	jailVsock     = "/vsock.sock"
	jailLog       = "/firecracker.log"
	jailMetrics   = "/firecracker.metrics"
	jailKernel    = "/vmlinux"
	jailInitrd    = "/initrd.img"
)

// JailPlan is where one VM's jail lives and what goes into it.
type JailPlan struct {
	ID string `json:"id"`
	// Dir is <chroot_base>/<exec_file_name>/<id>; removing it removes the
	// jail. Root is Dir/root, Firecracker's "/".
	Dir  string `json:"dir"`
	Root string `json:"root"`
	// Links are host files put into Root under their in-jail name: the
	// VM's disks hard-linked, the image's boot files copied.
	Links []JailLink `json:"links"`
	// UID and GID are the jail's user (the VM's own).
	UID int `json:"uid,omitempty"`
	GID int `json:"gid,omitempty"`
	// CgroupDir is the cgroup the jailer creates for the VM, removed with
	// the jail ("" when the jailer creates none).
	CgroupDir string `json:"cgroup_dir,omitempty"`
}

// JailLink puts the host file Src into the jail as Name ("/root.ext4").
type JailLink struct {
	Src  string `json:"src"`
	Name string `json:"name"`
	// Disk marks one of the VM's own disks: it must be a hard link,
	// since writes to a copy would never reach the VM's disk, and it is
	// handed to the jail's user. Anything else is an image's boot file,
	// shared by every VM of the image: the jail gets its own read-only
	// copy, so the shared inode never changes owner or mode.
	Disk bool `json:"disk,omitempty"`
	// Shared marks a snapshot's memory file that many VMs map at once
	// (vmm.Restore.Share): it is hard-linked, so every restored VM maps
	// the same inode and shares its page cache, and it stays root's; its
	// mode becomes 0444 so each jail's user can open it. Firecracker
	// opens it read-only and maps it privately. Only root and the jails
	// reach the inode (the snapshot and jail directories are root's).
	Shared bool `json:"shared,omitempty"`
}

// HostPath is where an in-jail path is seen from the host.
func (p JailPlan) HostPath(inJail string) string {
	return filepath.Join(p.Root, inJail)
}

// PlanJail lays out the jail for VM id: kernel, initrd and disks are
// linked in under fixed names, so the API calls name in-jail paths only.
func PlanJail(cfg JailerConfig, execFile, id, kernel, initrd string, disks []string) (JailPlan, error) {
	if !jailIDRe.MatchString(id) {
		return JailPlan{}, fmt.Errorf("jailer id %q: want 1 to 64 letters, digits or hyphens", id)
	}
	base := cfg.ChrootBase
	if base == "" {
		base = DefaultChrootBase
	}
	if !filepath.IsAbs(base) {
		return JailPlan{}, fmt.Errorf("jailer chroot base %q is not an absolute path", base)
	}
	if cfg.UID <= 0 || cfg.GID <= 0 {
		return JailPlan{}, fmt.Errorf("jailer uid/gid %d/%d: Firecracker must not run as root in its jail; set [vmm] uid_range (or [firecracker] uid and gid)", cfg.UID, cfg.GID)
	}
	dir := filepath.Join(base, filepath.Base(execFile), id)
	p := JailPlan{ID: id, Dir: dir, Root: filepath.Join(dir, "root"), UID: cfg.UID, GID: cfg.GID}
	// A restore (kernel "") boots nothing: the snapshot's files are
	// added by addSnapshot instead.
	if kernel != "" {
		p.Links = append(p.Links, JailLink{Src: kernel, Name: jailKernel})
	}
	if initrd != "" {
		p.Links = append(p.Links, JailLink{Src: initrd, Name: jailInitrd})
	}
	for i, d := range disks {
		p.Links = append(p.Links, JailLink{Src: d, Name: "/" + driveID(i) + ".img", Disk: true})
	}
	// Per docs/jailer.md the jailer makes <cgroup_base>/<parent>/<id>
	// when --cgroup is given (v2: only then).
	if len(cfg.Cgroups) > 0 {
		p.CgroupDir = filepath.Join("/sys/fs/cgroup", parentCgroup(cfg, execFile), id)
	}
	return p, nil
}

func parentCgroup(cfg JailerConfig, execFile string) string {
	if cfg.ParentCgroup != "" {
		return cfg.ParentCgroup
	}
	return filepath.Base(execFile)
}

// JailerArgs is the jailer command line (docs/jailer.md); fcArgs go to
// Firecracker after "--". --daemonize is left out on purpose: it would
// send Firecracker's stdout (the guest's serial console) to /dev/null;
// banger detaches the process itself and keeps the console in a file.
func JailerArgs(cfg JailerConfig, execFile, id string, fcArgs []string) []string {
	version := cfg.CgroupVersion
	if version == "" {
		version = "2"
	}
	base := cfg.ChrootBase
	if base == "" {
		base = DefaultChrootBase
	}
	args := []string{
		"--id", id,
		"--exec-file", execFile,
		"--uid", strconv.Itoa(cfg.UID),
		"--gid", strconv.Itoa(cfg.GID),
		"--cgroup-version", version,
	}
	for _, c := range cfg.Cgroups {
		args = append(args, "--cgroup", c)
	}
	if cfg.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", cfg.ParentCgroup)
	}
	args = append(args, "--chroot-base-dir", base)
	if len(fcArgs) > 0 {
		args = append(append(args, "--"), fcArgs...)
	}
	return args
}

// Prepare builds the jail's root. The VM's own disks are hard-linked in
// and, with the log, metrics and the root itself, given to the jail's
// user, who must open disks read-write and create the sockets. The
// image's kernel and initrd are copied (reflinked where the filesystem
// can): a hard link would be the very inode every VM of the image boots,
// and a chown of it would let a compromised Firecracker rewrite it.
func (p JailPlan) Prepare(ctx context.Context) error {
	if err := os.MkdirAll(p.Root, 0o750); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	var own []string
	for _, l := range p.Links {
		dst := p.HostPath(l.Name)
		_ = os.Remove(dst)
		if l.Shared {
			if err := os.Chmod(l.Src, 0o444); err != nil {
				return fmt.Errorf("share %s with the jail: %w", l.Src, err)
			}
			if err := os.Link(l.Src, dst); err != nil {
				return fmt.Errorf("hard-link %s into the jail: %w (put [firecracker] chroot_base on the filesystem of banger's state directory)", l.Src, err)
			}
			continue
		}
		if !l.Disk {
			if err := system.CloneFile(ctx, l.Src, dst); err != nil {
				return fmt.Errorf("copy %s into the jail: %w", l.Src, err)
			}
			// Root's, readable by the jail's user, writable by nobody.
			if err := os.Chmod(dst, 0o444); err != nil {
				return fmt.Errorf("copy %s into the jail: %w", l.Src, err)
			}
			continue
		}
		if err := os.Link(l.Src, dst); err != nil {
			return fmt.Errorf("hard-link %s into the jail: %w (put [firecracker] chroot_base on the filesystem of banger's state directory)", l.Src, err)
		}
		own = append(own, l.Name)
	}
	for _, name := range []string{jailLog, jailMetrics} {
		f, err := os.OpenFile(p.HostPath(name), os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("create %s in jail: %w", name, err)
		}
		f.Close()
		own = append(own, name)
	}
	var errs []error
	for _, name := range own {
		errs = append(errs, os.Lchown(p.HostPath(name), p.UID, p.GID))
	}
	errs = append(errs, os.Chown(p.Root, p.UID, p.GID))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hand jail files to uid %d: %w", p.UID, err)
	}
	return nil
}

func (p JailPlan) linkNames() []string {
	var n []string
	for _, l := range p.Links {
		n = append(n, l.Name)
	}
	return n
}

// Remove deletes the jail and its cgroup. The hard links go; the VM's
// own disks stay in the VM directory.
func (p JailPlan) Remove() error {
	var errs []error
	if p.Dir != "" {
		errs = append(errs, os.RemoveAll(p.Dir))
	}
	if p.CgroupDir != "" {
		if err := os.Remove(p.CgroupDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	return nil
}

// driveID names the i-th block device; the first is the root disk.
func driveID(i int) string {
	if i == 0 {
		return "rootfs"
	}
	return "disk" + strconv.Itoa(i)
}
