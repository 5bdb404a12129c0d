package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
)

// TestDeriveImage provisions an image from the base one over SSH
// (`image build --from --provision`), boots a VM from it, and checks the
// refusals and that a failed provisioning leaves nothing behind.
func TestDeriveImage(t *testing.T) {
	in := shared(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "provision.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
set -e
echo "provisioning as $(id -un) in $PWD"
echo derived > /etc/banger-derived
mkdir -p /root/tools && echo tool > /root/tools/marker
echo 'export BANGER_DERIVED=1' >> /root/.bashrc
echo "to stderr" >&2
`), 0o644)

	const name = "e2e-derived"
	t.Cleanup(func() { in.run(nil, "image", "delete", name) })
	r := in.must(t, "image", "build", "--from", "debian-bookworm", "--provision", script, "--name", name)
	t.Logf("derive:\n%s", r.stderr)
	for _, want := range []string{"provision", "│ provisioning as root in /root", "│ to stderr", "shutdown", "verify", "register"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("build output lacks %q:\n%s", want, r.stderr)
		}
	}
	var img api.Image
	json.Unmarshal([]byte(in.must(t, "image", "show", name, "--json").stdout), &img)
	if img.State != api.ImageStaged || img.From != "debian-bookworm" || img.Packages["openssh-server"] == "" || img.KernelVersion == "" {
		t.Errorf("derived image: %+v", img)
	}

	// Unchanged inputs: a no-op that boots nothing.
	r = in.must(t, "image", "build", "--from", "debian-bookworm", "--provision", script, "--name", name)
	if !strings.Contains(r.stderr, "fingerprint") || strings.Contains(r.stderr, "boot") {
		t.Errorf("rebuild with unchanged inputs did work:\n%s", r.stderr)
	}

	vm := in.createVM(t, "derived-vm", "--image", name)
	defer in.run(nil, "vm", "delete", "--force", vm.Name)
	out := in.must(t, "vm", "exec", vm.Name, "--", "sh", "-c", "cat /etc/banger-derived /root/tools/marker; grep -c BANGER_DERIVED /root/.bashrc").stdout
	if got := strings.Fields(out); strings.Join(got, " ") != "derived tool 1" {
		t.Errorf("derived VM: got %q, want the provisioned file, the work seed and one .bashrc line", out)
	}
	in.must(t, "vm", "delete", "--force", vm.Name)

	// Refusals, each before anything boots.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--provision", script}, "--provision needs --from"},
		{[]string{"--from", "debian-bookworm"}, "--from needs --provision"},
		{[]string{"--from", "no-such-image", "--provision", script}, "no-such-image"},
		{[]string{"--from", "debian-bookworm", "--provision", filepath.Join(dir, "missing.sh")}, "no such file"},
		{[]string{"--from", "debian-bookworm", "--provision", script, "--egress", "some"}, "unknown egress"},
	} {
		r := in.run(nil, append([]string{"image", "build"}, tc.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("image build %v: want failure with %q, got %s", tc.args, tc.want, r)
		}
	}

	// A failing script fails the build with its status and output, and
	// leaves no image, image directory or provisioning VM behind.
	bad := filepath.Join(dir, "bad.sh")
	os.WriteFile(bad, []byte("#!/bin/sh\necho about to fail\nexit 3\n"), 0o644)
	layout := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return in.home
		}
		return ""
	}, 0)
	before := dirNames(t, layout.ImagesDir)
	r = in.run(nil, "image", "build", "--from", "debian-bookworm", "--provision", bad, "--name", "e2e-bad")
	if r.code == 0 || !strings.Contains(r.stderr, "exited with status 3") || !strings.Contains(r.stderr, "│ about to fail") {
		t.Errorf("failing script: %s", r)
	}
	if r := in.run(nil, "image", "show", "e2e-bad"); r.code == 0 {
		t.Errorf("a failed derive registered an image")
	}
	if after := dirNames(t, layout.ImagesDir); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("image dirs before %v after %v", before, after)
	}
	for _, n := range dirNames(t, layout.VMsDir) {
		if strings.HasPrefix(n, "p") {
			t.Errorf("provisioning VM dir %s left behind", n)
		}
	}
	for _, pid := range instanceProcesses(in.home) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if strings.Contains(string(cmdline), layout.InstancePrefix()+"-p") {
			t.Errorf("provisioning VMM %d left running", pid)
		}
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
