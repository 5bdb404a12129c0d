package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

func noStage(ctx context.Context) stageFunc {
	return func(_ string, fn func(ctx context.Context) error) error { return fn(ctx) }
}

// fakeKernel is a file with an x86 setup header naming release kver.
func fakeKernel(t *testing.T, p, kver string) {
	t.Helper()
	b := make([]byte, 0x1000)
	copy(b[0x202:], "HdrS")
	b[0x20e], b[0x20f] = 0x00, 0x06 // version string at 0x800
	copy(b[0x800:], kver+" (test) #1 SMP\x00")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeRootfs makes a small real ext4 rootfs (mkfs.ext4 -d) holding a
// dpkg status file, a /root skeleton and, when kver is set, its modules.
func fakeRootfs(t *testing.T, p, kver string) {
	t.Helper()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "var/lib/dpkg"), 0o755)
	os.WriteFile(filepath.Join(tree, "var/lib/dpkg/status"),
		[]byte("Package: git\nStatus: install ok installed\nVersion: 1:2.39\n\nPackage: openssh-server\nStatus: install ok installed\nVersion: 9.2\n"), 0o644)
	os.MkdirAll(filepath.Join(tree, "root"), 0o700)
	os.WriteFile(filepath.Join(tree, "root/.bashrc"), []byte("# rootfs bashrc\n"), 0o644)
	os.MkdirAll(filepath.Join(tree, "usr/lib"), 0o755)
	os.Symlink("usr/lib", filepath.Join(tree, "lib"))
	if kver != "" {
		os.MkdirAll(filepath.Join(tree, "usr/lib/modules", kver), 0o755)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, p, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
}

func TestVerifyAndPromoteStateChanges(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	d.layout = paths.Layout{ImagesDir: t.TempDir()}
	first, err := d.imageEngine().registerImage(ctx, "i1", t.TempDir(), image.Meta{Name: "first", Fingerprint: "fp1"})
	if err != nil {
		t.Fatal(err)
	}
	if first.State != store.ImageStateManaged || !first.Default {
		t.Fatalf("the first image should be managed and the default: %+v", first)
	}
	second, err := d.imageEngine().registerImage(ctx, "i2", t.TempDir(), image.Meta{Name: "second", Fingerprint: "fp2"})
	if err != nil {
		t.Fatal(err)
	}
	if second.State != store.ImageStateStaged || second.Default {
		t.Fatalf("a later image should be staged: %+v", second)
	}

	// A failed verify is recorded, keeps the image staged and blocks
	// promotion.
	d.verifyHook = func(context.Context, string, image.Meta) error { return errors.New("ssh is not active") }
	if _, err := d.imageEngine().verifyRecorded(ctx, second, noStage(ctx)); err == nil {
		t.Fatal("verify should fail")
	}
	got, _ := d.store.GetImage(ctx, "second")
	if got.State != store.ImageStateStaged || got.VerifyError != "ssh is not active" || got.VerifiedAt.IsZero() {
		t.Fatalf("after failed verify: %+v", got)
	}
	_, err = d.imageEngine().PromoteImage(ctx, "second")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Hint, "banger image verify second") {
		t.Fatalf("promote after failed verify: %v", err)
	}

	// A passing verify clears the error; promote then switches the default.
	var seenDir string
	d.verifyHook = func(_ context.Context, dir string, m image.Meta) error { seenDir = dir; return nil }
	view, err := d.imageEngine().verifyRecorded(ctx, got, noStage(ctx))
	if err != nil || view.VerifyError != "" || view.VerifiedAt == nil || seenDir != second.Dir {
		t.Fatalf("verify: %+v %v", view, err)
	}
	promoted, err := d.imageEngine().PromoteImage(ctx, "second")
	if err != nil {
		t.Fatal(err)
	}
	old, _ := d.store.GetImage(ctx, "first")
	if promoted.State != store.ImageStateManaged || !promoted.Default || old.Default || old.State != store.ImageStateManaged {
		t.Fatalf("after promote: second=%+v first=%+v", promoted, old)
	}
	// Promoting the default again is a no-op.
	if _, err := d.imageEngine().PromoteImage(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.imageEngine().PromoteImage(ctx, "nope"); !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Fatalf("promote unknown: %v", err)
	}
}

func TestDeleteImageInUseRefused(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	dir := t.TempDir()
	img, err := d.imageEngine().registerImage(ctx, "i1", dir, image.Meta{Name: "base", Fingerprint: "fp"})
	if err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "dev", ImageID: img.ID, State: store.VMStateStopped}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	err = d.imageEngine().DeleteImage(ctx, "base")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Message, "dev") {
		t.Fatalf("delete in use: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("image dir removed despite the refusal: %v", err)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := d.imageEngine().DeleteImage(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("image dir left: %v", err)
	}
}

func TestHealImage(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	d := testDaemon(t, nil)
	dir := t.TempDir()
	fakeKernel(t, filepath.Join(dir, image.FileKernel), "6.1.0-99-cloud-amd64")
	os.WriteFile(filepath.Join(dir, image.FileInitrd), []byte("initrd"), 0o644)
	fakeRootfs(t, filepath.Join(dir, image.FileRootfs), "")
	// What an older banger left: a row without fingerprint or manifest.
	img := store.Image{ID: "old1", Name: "old", Dir: dir, State: store.ImageStateManaged, Suite: "bookworm"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	if !needsHeal(img) {
		t.Fatal("an image without fingerprint needs healing")
	}
	healed, err := d.imageEngine().healImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if len(healed.Fingerprint) != 64 || healed.KernelVersion != "6.1.0-99-cloud-amd64" || needsHeal(healed) {
		t.Fatalf("healed: %+v", healed)
	}
	stored, _ := d.store.GetImage(ctx, "old")
	var m image.Manifest
	if err := json.Unmarshal([]byte(stored.Manifest), &m); err != nil || m.Packages["git"] != "1:2.39" || m.Packages["openssh-server"] != "9.2" {
		t.Fatalf("stored manifest %q: %v", stored.Manifest, err)
	}
	meta, err := image.ReadMeta(dir)
	if err != nil || meta.Fingerprint != healed.Fingerprint {
		t.Fatalf("image.json: %+v %v", meta, err)
	}
	// Healing is stable: the same files give the same fingerprint.
	img.Fingerprint = ""
	again, err := d.imageEngine().healImage(ctx, img)
	if err != nil || again.Fingerprint != healed.Fingerprint {
		t.Fatalf("second heal: %s vs %s (%v)", again.Fingerprint, healed.Fingerprint, err)
	}
}

func TestRegisterImage(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	d := testDaemon(t, nil)
	home := t.TempDir()
	d.layout = paths.Layout{ImagesDir: filepath.Join(home, "images")}
	src := t.TempDir()
	const kver = "6.1.0-77-cloud-amd64"
	kernel, rootfs := filepath.Join(src, "vmlinuz"), filepath.Join(src, "root.ext4")
	fakeKernel(t, kernel, kver)
	fakeRootfs(t, rootfs, "")
	mods := filepath.Join(src, kver)
	os.MkdirAll(filepath.Join(mods, "kernel/drivers"), 0o755)
	os.WriteFile(filepath.Join(mods, "kernel/drivers/virtio_console.ko"), []byte("module"), 0o644)
	os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("dep"), 0o644)
	os.Symlink("kernel", filepath.Join(mods, "build"))

	var ae *api.Error
	// The rootfs lacks the kernel's modules: refused without --modules.
	_, err := d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "void", Rootfs: rootfs, Kernel: kernel})
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "no /lib/modules/"+kver) {
		t.Fatalf("without modules: %v", err)
	}
	// Modules of another kernel: refused.
	other := filepath.Join(src, "5.10.0-1-amd64")
	os.MkdirAll(other, 0o755)
	_, err = d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "void", Rootfs: rootfs, Kernel: kernel, Modules: other})
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "does not match the kernel") {
		t.Fatalf("mismatched modules: %v", err)
	}
	// Not a kernel: refused.
	_, err = d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "void", Rootfs: rootfs, Kernel: rootfs})
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "--kernel") {
		t.Fatalf("bad kernel: %v", err)
	}

	img, err := d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "void", Rootfs: rootfs, Kernel: kernel, Modules: mods})
	if err != nil {
		t.Fatal(err)
	}
	if img.State != store.ImageStateManaged || !img.Default || img.KernelVersion != kver || len(img.Fingerprint) != 64 {
		t.Fatalf("registered: %+v", img)
	}
	imgRootfs := filepath.Join(img.Dir, image.FileRootfs)
	out, err := exec.Command("debugfs", "-R", "cat /usr/lib/modules/"+kver+"/kernel/drivers/virtio_console.ko", imgRootfs).Output()
	if err != nil || string(out) != "module" {
		t.Fatalf("modules not in the rootfs: %q %v", out, err)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /usr/lib/modules/"+kver+"/build", imgRootfs).Output()
	if !strings.Contains(string(out), "Type: symlink") {
		t.Fatalf("symlink not copied: %s", out)
	}
	// The source rootfs is untouched: the image has its own copy.
	out, _ = exec.Command("debugfs", "-R", "stat /usr/lib/modules/"+kver, rootfs).Output()
	if strings.Contains(string(out), "Type: directory") {
		t.Fatal("the source rootfs was modified")
	}
	if b, _ := os.ReadFile(filepath.Join(img.Dir, image.DirWorkSeed, ".bashrc")); string(b) != "# rootfs bashrc\n" {
		t.Fatalf("work seed not taken from the rootfs: %q", b)
	}
	if _, err := image.ReadMeta(img.Dir); err != nil {
		t.Fatalf("registered image is not exportable: %v", err)
	}
	var m image.Manifest
	json.Unmarshal([]byte(img.Manifest), &m)
	if m.Packages["git"] == "" || m.KernelVersion != kver {
		t.Fatalf("manifest %+v", m)
	}
	// A second image is staged.
	fakeRootfs(t, rootfs, kver)
	second, err := d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "void2", Rootfs: rootfs, Kernel: kernel})
	if err != nil || second.State != store.ImageStateStaged || second.Default {
		t.Fatalf("second: %+v %v", second, err)
	}
	if _, err := d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "void2", Rootfs: rootfs, Kernel: kernel}); !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Fatalf("duplicate name: %v", err)
	}
}
