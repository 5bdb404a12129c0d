package image_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/image/voidfixture"
	"github.com/bangerdev/banger/internal/system"
)

func voidSpec(p voidfixture.Paths) image.VoidSpec {
	return image.VoidSpec{Name: "void", RootfsTar: p.RootfsTar, Kernel: p.Kernel, Initrd: p.Initrd, Modules: p.Modules}
}

func TestCheckVoid(t *testing.T) {
	b := &image.Builder{Runner: system.Exec{}}
	ctx := context.Background()
	good, err := voidfixture.Write(t.TempDir(), voidfixture.Release, voidfixture.Release)
	if err != nil {
		t.Fatal(err)
	}
	kver, err := b.CheckVoid(ctx, voidSpec(good))
	if err != nil || kver != voidfixture.Release {
		t.Fatalf("CheckVoid = %q, %v", kver, err)
	}

	otherKernel, _ := voidfixture.Write(t.TempDir(), "6.1.0_9", voidfixture.Release)
	otherInitrd, _ := voidfixture.Write(t.TempDir(), voidfixture.Release, "6.1.0_9")
	missing := voidSpec(good)
	missing.Initrd = ""
	relative := voidSpec(good)
	relative.Kernel = "vmlinuz"
	notKernel := voidSpec(good)
	notKernel.Kernel = good.RootfsTar
	for name, tc := range map[string]struct {
		spec image.VoidSpec
		want string
	}{
		"kernel of another release": {voidSpec(otherKernel), "is for kernel " + voidfixture.Release + ", but --kernel is 6.1.0_9"},
		"initrd of another release": {voidSpec(otherInitrd), "carries modules for [6.1.0_9], not for kernel " + voidfixture.Release},
		"missing initrd":            {missing, "needs --initrd"},
		"relative path":             {relative, "not an absolute path"},
		"not a bzImage":             {notKernel, "not an x86 bzImage"},
	} {
		_, err := b.CheckVoid(ctx, tc.spec)
		if !errors.Is(err, image.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrInvalid with %q", name, err, tc.want)
		}
	}
}

func TestBuildVoid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("extracting a rootfs with its ownership needs root")
	}
	ctx := context.Background()
	b := &image.Builder{Runner: system.Exec{}}
	p, err := voidfixture.Write(t.TempDir(), voidfixture.Release, voidfixture.Release)
	if err != nil {
		t.Fatal(err)
	}
	spec := voidSpec(p)
	kver, err := b.CheckVoid(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := image.VoidFingerprint(spec)
	if err != nil {
		t.Fatal(err)
	}
	if fp2, _ := image.VoidFingerprint(spec); fp2 != fp {
		t.Fatalf("fingerprint is not stable")
	}
	out := filepath.Join(t.TempDir(), "img")
	var stages []string
	stage := func(name string, fn func(context.Context) error) error {
		stages = append(stages, name)
		return fn(ctx)
	}
	meta, err := b.BuildVoid(ctx, spec, kver, fp, filepath.Join(t.TempDir(), "work"), out, stage)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(stages, ",") != "extract,customize,kernel,manifest,mkfs" || meta.Distro != "void" || meta.KernelVersion != voidfixture.Release {
		t.Errorf("stages %v meta %+v", stages, meta)
	}
	m, err := os.ReadFile(filepath.Join(out, image.FileManifest))
	if err != nil || !strings.Contains(string(m), `"openssh": "9.8p1_1"`) || strings.Contains(string(m), "_XBPS") {
		t.Errorf("manifest: %s %v", m, err)
	}
	// Look into the built filesystem: the agent service is enabled, the
	// baked host key is gone, the modules are in place.
	rootfs := filepath.Join(out, image.FileRootfs)
	for path, want := range map[string]string{
		"/etc/runit/runsvdir/default/banger-agent":  "Type: symlink",
		"/etc/runit/runsvdir/default/sshd":          "Type: symlink",
		"/etc/runit/core-services/90-banger.sh":     "Type: regular",
		"/usr/lib/modules/" + kver + "/modules.dep": "Type: regular",
		"/usr/bin/su": "Mode:  04755",
	} {
		outb, err := system.Exec{}.Run(ctx, "debugfs", "-R", "stat "+path, rootfs)
		if err != nil || !strings.Contains(string(outb), want) {
			t.Errorf("%s in rootfs: want %q, got %s %v", path, want, outb, err)
		}
	}
	if outb, _ := (system.Exec{}).Run(ctx, "debugfs", "-R", "stat /etc/ssh/ssh_host_ed25519_key", rootfs); strings.Contains(string(outb), "Type: regular") {
		t.Errorf("the baked host key is still in the rootfs")
	}
	if _, err := os.Stat(filepath.Join(out, image.DirWorkSeed, ".bashrc")); err != nil {
		t.Errorf("work seed: %v", err)
	}
}

func TestParsePkgdb(t *testing.T) {
	got, err := image.ParsePkgdb(strings.NewReader(`<plist><dict><key>zlib</key><dict><key>pkgver</key><string>zlib-1.3.1_1</string></dict></dict></plist>`))
	if err != nil || got["zlib"] != "1.3.1_1" || len(got) != 1 {
		t.Errorf("ParsePkgdb = %v, %v", got, err)
	}
	if _, err := image.ParsePkgdb(strings.NewReader(`<plist><dict>`)); err == nil {
		t.Errorf("truncated plist parsed")
	}
}

// FuzzInitrdModules feeds arbitrary bytes to the initramfs walker (plain
// cpio and gzip segments; other compressions would shell out).
func FuzzInitrdModules(f *testing.F) {
	dir := f.TempDir()
	p, err := voidfixture.Write(dir, voidfixture.Release, voidfixture.Release)
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(p.Initrd)
	f.Add(seed)
	f.Add([]byte("070701"))
	f.Add([]byte("0707010000000100000000000000000000000000000000000000000000000000000000000000000000000000000000FFFFFFFF00000000"))
	b := &image.Builder{Runner: system.Exec{}}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 0 && data[0] != '0' && data[0] != 0x1f && data[0] != 0 {
			return // keep to the in-process decoders
		}
		path := filepath.Join(t.TempDir(), "initrd")
		os.WriteFile(path, data, 0o644)
		_, _ = b.CheckVoidInitrd(context.Background(), path)
	})
}

func FuzzParsePkgdb(f *testing.F) {
	f.Add([]byte(`<plist><dict><key>zlib</key><dict><key>pkgver</key><string>zlib-1.3.1_1</string></dict></dict></plist>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = image.ParsePkgdb(bytes.NewReader(data))
	})
}
