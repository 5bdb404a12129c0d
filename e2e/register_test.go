package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
)

// baseImage is the suite's base image, by name: never "whatever is the
// default now", which depends on what earlier tests promoted.
func baseImage(t testing.TB, in *instance) api.Image {
	t.Helper()
	cfg := config.Default()
	name := image.DefaultSpec(cfg.Image.Suite, cfg.Image.Mirror, cfg.Image.SecurityMirror).Name
	var img api.Image
	r := in.must(t, "image", "show", name, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &img); err != nil {
		t.Fatalf("image show %s: %v\n%s", name, err, r.stdout)
	}
	return img
}

// TestImageRegisterModulesAndHeal: `image register --modules` through the
// CLI puts a kernel's modules into a rootfs that lacks them (a VM then
// boots from it, so they load), and a VM created from an image whose
// manifest is missing (as an older banger left them) heals it in the
// create's `heal` stage. One boot covers both.
func TestImageRegisterModulesAndHeal(t *testing.T) {
	in := shared(t)
	base := baseImage(t, in)
	kver := base.KernelVersion
	work, err := os.MkdirTemp("/var/tmp", "bgreg") // rootfs-sized: not tmpfs
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	sh := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	rootfs := filepath.Join(work, "root.ext4")
	sh("cp", "--reflink=auto", "--sparse=always", filepath.Join(base.Dir, image.FileRootfs), rootfs)
	// The kernel's modules, out of the image, into a directory named
	// after the release (what --modules wants) ...
	sh("debugfs", "-R", "rdump /lib/modules/"+kver+" "+work, rootfs)
	mods := filepath.Join(work, kver)
	if _, err := os.Stat(filepath.Join(mods, "modules.dep")); err != nil {
		t.Fatalf("rdump of the modules: %v", err)
	}
	// ... and out of the rootfs copy (renamed: link + unlink keeps the
	// directory's link counts right).
	sh("debugfs", "-w", "-R", "link /lib/modules/"+kver+" /lib/modules/moved-away", rootfs)
	sh("debugfs", "-w", "-R", "unlink /lib/modules/"+kver, rootfs)
	if out, _ := exec.Command("debugfs", "-R", "stat /lib/modules/"+kver, rootfs).CombinedOutput(); strings.Contains(string(out), "Type: directory") {
		t.Fatalf("the rootfs copy still has its modules")
	}
	kernel, initrd := filepath.Join(base.Dir, image.FileKernel), filepath.Join(base.Dir, image.FileInitrd)
	const name = "e2e-registered"
	defer in.run(nil, "image", "delete", name)

	r := in.run(nil, "image", "register", name, "--rootfs", rootfs, "--kernel", kernel, "--initrd", initrd)
	if r.code != 1 || !strings.Contains(r.stderr, "no /lib/modules/"+kver) || !strings.Contains(r.stderr, "--modules") {
		t.Fatalf("register of a rootfs without modules and no --modules: %s", r)
	}
	if r := in.run(nil, "image", "show", name); r.code == 0 {
		t.Fatalf("a refused register left an image: %s", r.stdout)
	}
	r = in.must(t, "image", "register", name, "--rootfs", rootfs, "--kernel", kernel, "--initrd", initrd, "--modules", mods)
	if !strings.Contains(r.stdout, "registered") || !strings.Contains(r.stdout, kver) {
		t.Fatalf("register output: %s", r)
	}
	var reg api.Image
	json.Unmarshal([]byte(in.must(t, "image", "show", name, "--json").stdout), &reg)
	regRootfs := filepath.Join(reg.Dir, image.FileRootfs)
	if out := sh("debugfs", "-R", "stat /lib/modules/"+kver+"/modules.dep", regRootfs); !strings.Contains(out, "Type: regular") {
		t.Fatalf("registered rootfs lacks modules.dep: %s", out)
	}

	// What an older banger left: no manifest next to the image.
	if err := os.Remove(filepath.Join(reg.Dir, image.FileManifest)); err != nil {
		t.Fatal(err)
	}
	const vmName = "e2e-reg-vm"
	defer in.run(nil, "vm", "delete", "--force", vmName)
	r = in.run(nil, "vm", "create", vmName, "--image", name, "--egress", "none")
	if r.code != 0 {
		t.Fatalf("vm create from the registered image: %s\ndaemon log:\n%s", r, in.daemonLog())
	}
	if !strings.Contains(r.stderr, "heal") {
		t.Fatalf("vm create from an image without a manifest shows no heal stage:\n%s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(reg.Dir, image.FileManifest)); err != nil {
		t.Fatalf("heal did not write the manifest back: %v", err)
	}
	// The injected modules are the ones that load: the agent answered
	// over virtio-serial (virtio_console is a module), and /proc/modules agrees.
	if r := in.must(t, "vm", "exec", vmName, "--", "sh", "-c", "uname -r; cat /proc/modules"); !strings.Contains(r.stdout, kver) || !strings.Contains(r.stdout, "virtio_console") {
		t.Fatalf("guest kernel and modules: %s", r.stdout)
	}
	in.must(t, "vm", "delete", vmName)
	in.must(t, "image", "delete", name)
}
