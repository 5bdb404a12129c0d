// Package doctor checks that a host can run banger and says how to fix
// what is missing. The daemon runs the relevant checks before `vm create`
// and `image build`, so those fail early with the same messages.
package doctor

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/api"
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

// MinFirecracker is the oldest Firecracker banger runs: 1.8 describes its
// devices through ACPI, which the Debian kernel (no virtio-mmio command
// line devices) needs to find its disks.
var MinFirecracker = [3]int{1, 8, 0}

// firecrackerFix says where Firecracker comes from (no distro packages it).
const firecrackerFix = "install Firecracker >= 1.8 (a release binary from https://github.com/firecracker-microvm/firecracker/releases, as /usr/local/bin/firecracker), or use --vmm qemu"

// Firecracker checks the firecracker binary and its version. required
// makes a missing or old one a failure (a VM asked for Firecracker);
// otherwise it is a warning, since QEMU runs VMs without it. Its vsock
// is a userspace device, so /dev/vhost-vsock is not needed.
func Firecracker(ctx context.Context, r system.Runner, required bool) Check {
	c := Check{Name: "firecracker", Required: required}
	bad := Warn
	if required {
		bad = Fail
	}
	path, err := system.LookPath("firecracker")
	if err != nil {
		c.Status, c.Detail, c.Fix = bad, "firecracker not found in PATH", firecrackerFix
		return c
	}
	out, err := r.Run(ctx, path, "--version")
	if err != nil {
		c.Status, c.Detail, c.Fix = bad, fmt.Sprintf("%s --version failed: %v", path, err), firecrackerFix
		return c
	}
	v, err := ParseFirecrackerVersion(string(out))
	if err != nil {
		c.Status, c.Detail, c.Fix = bad, err.Error(), firecrackerFix
		return c
	}
	c.Detail = fmt.Sprintf("%s (v%d.%d.%d)", path, v[0], v[1], v[2])
	if versionLess(v, MinFirecracker) {
		c.Status = bad
		c.Detail += ": older than 1.8, which guests need for ACPI device discovery"
		c.Fix = firecrackerFix
		return c
	}
	c.Status = OK
	return c
}

// Jailer checks the jailer binary (only VMs created with --jailer use it).
func Jailer(ctx context.Context, r system.Runner) Check {
	c := tool(ctx, r, "jailer", "firecracker", "--version")
	if c.Status == Fail {
		c.Fix = "install the jailer binary from the same Firecracker release as firecracker, or create the VM without --jailer"
	}
	return c
}

// ParseFirecrackerVersion reads "Firecracker v1.8.0" (the first line of
// `firecracker --version`).
func ParseFirecrackerVersion(out string) ([3]int, error) {
	var v [3]int
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "Firecracker" || !strings.HasPrefix(f[1], "v") {
		return v, fmt.Errorf("unexpected `firecracker --version` output %q", line)
	}
	// Release candidates and dev builds carry a suffix: "v1.9.0-dev".
	num, _, _ := strings.Cut(f[1][1:], "-")
	parts := strings.Split(num, ".")
	if len(parts) != 3 {
		return v, fmt.Errorf("unexpected firecracker version %q", f[1])
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 1<<20 {
			return v, fmt.Errorf("unexpected firecracker version %q", f[1])
		}
		v[i] = n
	}
	return v, nil
}

func versionLess(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}
