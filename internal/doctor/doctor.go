// Package doctor checks that a host can run banger and says how to fix
// what is missing. The daemon runs the relevant checks before `vm create`
// and `image build`, so those fail early with the same messages.
package doctor

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/system"
)

// Check statuses.
const (
	OK   = "ok"
	Warn = "warn"
	Fail = "fail"
)

// Check is one result line; the type lives in api so the daemon can send
// it and clients can read it.
type Check = api.Check

// Failed reports whether any required check failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Required && c.Status == Fail {
			return true
		}
	}
	return false
}

// tool checks one host program. aptPkg names the Debian package that
// provides it.
func tool(ctx context.Context, r system.Runner, name, aptPkg string, versionArgs ...string) Check {
	c := Check{Name: name, Required: true}
	path, err := system.LookPath(name)
	if err != nil {
		c.Status, c.Detail = Fail, name+" not found in PATH"
		c.Fix = "apt-get install -y " + aptPkg
		return c
	}
	c.Status, c.Detail = OK, path
	if len(versionArgs) > 0 {
		if out, err := r.Run(ctx, path, versionArgs...); err == nil {
			line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
			c.Detail = line
		}
	}
	return c
}

// QEMU checks the emulator and its image tool.
func QEMU(ctx context.Context, r system.Runner) []Check {
	return []Check{
		tool(ctx, r, "qemu-system-x86_64", "qemu-system-x86", "--version"),
		tool(ctx, r, "qemu-img", "qemu-utils", "--version"),
	}
}

// Mkfs checks mkfs.ext4 (work, seed and image disks are made without loop
// mounts via `mkfs.ext4 -d`).
func Mkfs(ctx context.Context, r system.Runner) Check {
	return tool(ctx, r, "mkfs.ext4", "e2fsprogs")
}

// ImageTools checks what `image build` needs besides QEMU.
func ImageTools(ctx context.Context, r system.Runner) []Check {
	return []Check{
		tool(ctx, r, "mmdebstrap", "mmdebstrap", "--version"),
		tool(ctx, r, "lz4", "lz4", "--version"),
	}
}

// AgentTools checks what the agent image build needs: npm installs Node
// and the coding agents into the rootfs from the host side.
func AgentTools(ctx context.Context, r system.Runner) []Check {
	return []Check{tool(ctx, r, "npm", "npm", "--version")}
}

// Root checks that the process runs as root: mmdebstrap's default mode,
// mkfs ownership and (later) TAP devices need it.
func Root() Check {
	c := Check{Name: "root", Required: false, Status: OK, Detail: "running as root"}
	if os.Geteuid() != 0 {
		c.Status, c.Detail = Warn, fmt.Sprintf("running as uid %d", os.Geteuid())
		c.Fix = "image build bootstraps a rootfs and needs root: run the daemon as root (or via sudo)"
	}
	return c
}

// FreeDisk checks that dir's filesystem has at least need bytes free.
func FreeDisk(dir string, need uint64) Check {
	c := Check{Name: "disk", Required: true}
	free, err := system.FreeBytes(dir)
	if err != nil {
		c.Status, c.Detail = Warn, fmt.Sprintf("cannot stat %s: %v", dir, err)
		return c
	}
	c.Detail = fmt.Sprintf("%.1f GiB free in %s", float64(free)/(1<<30), dir)
	if free < need {
		c.Status = Fail
		c.Fix = fmt.Sprintf("free at least %.1f GiB there, or point BANGER_HOME elsewhere", float64(need)/(1<<30))
		return c
	}
	c.Status = OK
	return c
}

// KVM reports the accelerator decision. usable comes from a real boot
// probe; /dev/kvm existing proves nothing on nested hosts.
func KVM(usable bool, note string) Check {
	c := Check{Name: "kvm", Required: false, Detail: note}
	if usable {
		c.Status = OK
		return c
	}
	c.Status = Warn
	c.Fix = "VMs run under TCG software emulation (slower); on a host with working KVM, load kvm_intel/kvm_amd and check /dev/kvm permissions"
	return c
}

// Error renders the failed required checks as one message with fixes.
func Error(checks []Check) error {
	var b strings.Builder
	for _, c := range checks {
		if c.Required && c.Status == Fail {
			fmt.Fprintf(&b, "%s: %s", c.Name, c.Detail)
			if c.Fix != "" {
				fmt.Fprintf(&b, " (fix: %s)", c.Fix)
			}
			b.WriteString("; ")
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return fmt.Errorf("host check failed: %s", strings.TrimSuffix(b.String(), "; "))
}
