package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ProbeKVM decides whether KVM can really boot a Linux guest. /dev/kvm
// existing is not enough: nested or paravirtual KVM flavours (kvm_pvm) open
// fine and then hang a normal 64-bit kernel. The probe boots the given
// kernel with no root disk under KVM; a kernel that gets as far as failing
// to mount root has proved the accelerator works.
func ProbeKVM(ctx context.Context, binary, kernel string, timeout time.Duration) (ok bool, reason string) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false, "/dev/kvm is missing"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("cannot open /dev/kvm: %v", err)
	}
	f.Close()
	if binary == "" {
		binary = Binary
	}
	dir, err := os.MkdirTemp("", "banger-kvm-probe-")
	if err != nil {
		return false, err.Error()
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary,
		"-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", "host", "-m", "256", "-sandbox", Sandbox,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:"+console, "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 root=/dev/banger-probe-none")
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, _ := cmd.CombinedOutput()
	log, _ := os.ReadFile(console)
	if bytes.Contains(log, []byte("Kernel panic")) || bytes.Contains(log, []byte("VFS: Unable to mount root")) {
		return true, "a test kernel booted under KVM"
	}
	if ctx.Err() != nil {
		return false, fmt.Sprintf("a test kernel did not boot under KVM within %s (nested or paravirtual KVM?)", timeout)
	}
	return false, fmt.Sprintf("qemu -accel kvm failed: %s", bytes.TrimSpace(out))
}
