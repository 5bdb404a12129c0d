package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
)

// TestImage checks the registered image: default, manifest, no baked
// identity, and that a build with unchanged inputs is a no-op.
func TestImage(t *testing.T) {
	in := shared(t)
	var imgs []api.Image
	r := in.must(t, "image", "list", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &imgs); err != nil {
		t.Fatalf("image list: %v %s", err, r.stdout)
	}
	// The base image is the default (shared() restores that if an
	// earlier test promoted another); TestAgentImage may have added the
	// agent image next to it.
	var img api.Image
	for _, i := range imgs {
		if i.Default {
			img = i
		}
	}
	if img.Name != baseImage(t, in).Name || img.State != api.ImageManaged {
		t.Fatalf("image list: want the base image as the managed default: %s", r.stdout)
	}

	var shown api.Image
	r = in.must(t, "image", "show", img.Name, "--json")
	json.Unmarshal([]byte(r.stdout), &shown)
	for _, p := range []string{"openssh-server", "linux-image-cloud-amd64", "systemd-sysv", "git", "iproute2", "ca-certificates"} {
		if shown.Packages[p] == "" {
			t.Errorf("manifest lacks %s", p)
		}
	}
	if shown.KernelVersion == "" || !strings.HasSuffix(shown.KernelVersion, "cloud-amd64") {
		t.Errorf("kernel version %q", shown.KernelVersion)
	}

	// No identity baked into the rootfs: read it without mounting.
	rootfs := filepath.Join(img.Dir, image.FileRootfs)
	out, err := exec.Command("debugfs", "-R", "ls /etc/ssh", rootfs).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v %s", err, out)
	}
	if strings.Contains(string(out), "ssh_host_") {
		t.Errorf("rootfs has baked SSH host keys: %s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /etc/machine-id", rootfs).CombinedOutput()
	if !strings.Contains(string(out), "Size: 0") {
		t.Errorf("rootfs has a baked machine-id: %s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /etc/systemd/system/apt-daily.timer", rootfs).CombinedOutput()
	if !strings.Contains(string(out), "Fast link dest: \"/dev/null\"") {
		t.Errorf("apt timer not masked: %s", out)
	}
	for _, f := range []string{image.FileKernel, image.FileInitrd, image.FileVmlinux, image.FileManifest} {
		if out, err := exec.Command("test", "-s", filepath.Join(img.Dir, f)).CombinedOutput(); err != nil {
			t.Errorf("image lacks %s: %s", f, out)
		}
	}
	if out, _ := exec.Command("file", "-b", filepath.Join(img.Dir, image.FileVmlinux)).CombinedOutput(); len(out) > 0 && !strings.Contains(string(out), "ELF") {
		t.Errorf("vmlinux is not ELF: %s", out)
	}

	// Unchanged inputs: the build returns at once with the same image.
	t0 := time.Now()
	r = in.must(t, "image", "build", "--base", "--json")
	var again api.Image
	json.Unmarshal([]byte(r.stdout), &again)
	if again.ID != img.ID || time.Since(t0) > 10*time.Second {
		t.Fatalf("rebuild with unchanged inputs was not a no-op (%s): %s %s", time.Since(t0), r.stdout, r.stderr)
	}
}
