package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image/voidfixture"
)

// TestVoidImage assembles a Void image from a generated fixture (the Void
// repositories are not reachable here, and the fixture's kernel is only a
// header, so nothing boots): the checks that the parts match, the
// runit-based guest setup, the xbps manifest and a no-op rebuild.
func TestVoidImage(t *testing.T) {
	in := shared(t)
	good, err := voidfixture.Write(t.TempDir(), voidfixture.Release, voidfixture.Release)
	if err != nil {
		t.Fatal(err)
	}
	const name = "e2e-void"
	t.Cleanup(func() { in.run(nil, "image", "delete", name) })
	args := []string{"image", "build", "--distro", "void", "--name", name,
		"--rootfs-tar", good.RootfsTar, "--kernel", good.Kernel, "--initrd", good.Initrd, "--modules", good.Modules}
	r := in.must(t, args...)
	for _, st := range []string{"fingerprint", "extract", "customize", "kernel", "manifest", "mkfs", "register"} {
		if !strings.Contains(r.stderr, st) {
			t.Errorf("build output lacks stage %s:\n%s", st, r.stderr)
		}
	}
	var img api.Image
	json.Unmarshal([]byte(in.must(t, "image", "show", name, "--json").stdout), &img)
	if img.Distro != "void" || img.KernelVersion != voidfixture.Release || img.Packages["openssh"] != "9.8p1_1" || img.State != api.ImageStaged {
		t.Errorf("void image: %+v", img)
	}
	if r := in.must(t, "image", "list"); !strings.Contains(r.stdout, "void") {
		t.Errorf("image list has no distro column:\n%s", r.stdout)
	}
	r = in.must(t, args...)
	if strings.Contains(r.stderr, "extract") {
		t.Errorf("rebuild with unchanged inputs did work:\n%s", r.stderr)
	}

	bad, _ := voidfixture.Write(t.TempDir(), "6.1.0_9", voidfixture.Release)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kernel", bad.Kernel, "--initrd", good.Initrd, "--modules", good.Modules, "--rootfs-tar", good.RootfsTar}, "but --kernel is 6.1.0_9"},
		{[]string{"--kernel", good.Kernel, "--modules", good.Modules, "--rootfs-tar", good.RootfsTar}, "needs --initrd"},
		{[]string{"--kernel", good.Kernel, "--initrd", good.Initrd, "--modules", good.Modules, "--rootfs-tar", good.Kernel}, "is not a tar archive"},
	} {
		r := in.run(nil, append([]string{"image", "build", "--distro", "void", "--name", "e2e-void-bad"}, tc.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("void build %v: want failure with %q, got %s", tc.args, tc.want, r)
		}
		if r := in.run(nil, "image", "show", "e2e-void-bad"); r.code == 0 {
			t.Errorf("a failed void build registered an image")
		}
	}
	if r := in.run(nil, "image", "build", "--distro", "arch"); r.code == 0 || !strings.Contains(r.stderr, "unknown distro") {
		t.Errorf("--distro arch: %s", r)
	}
}
