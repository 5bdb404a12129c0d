package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDpkgStatus(t *testing.T) {
	status := "Package: adduser\nStatus: install ok installed\nVersion: 3.134\n\n" +
		"Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n" +
		"Package: git\nStatus: install ok installed\nPriority: optional\nVersion: 1:2.39.5-0+deb12u2\nDescription: fast\n multi-line: yes\n"
	got := ParseDpkgStatus([]byte(status))
	want := map[string]string{"adduser": "3.134", "git": "1:2.39.5-0+deb12u2"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s: got %q want %q", k, got[k], v)
		}
	}
}

func FuzzParseDpkgStatus(f *testing.F) {
	f.Add([]byte("Package: a\nStatus: install ok installed\nVersion: 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseDpkgStatus(b) })
}

func TestFingerprint(t *testing.T) {
	a := DefaultSpec("bookworm", "http://m/debian", "http://m/sec")
	b := DefaultSpec("bookworm", "http://m/debian", "http://m/sec")
	b.Packages = append([]string{b.Packages[len(b.Packages)-1]}, b.Packages[:len(b.Packages)-1]...)
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("package order changed the fingerprint")
	}
	c := a
	c.Suite = "trixie"
	if a.Fingerprint() == c.Fingerprint() {
		t.Fatal("suite did not change the fingerprint")
	}
	d := DefaultSpec("bookworm", "http://m/debian", "http://m/sec")
	d.Packages = append(d.Packages, "curl")
	if a.Fingerprint() == d.Fingerprint() {
		t.Fatal("packages did not change the fingerprint")
	}
}

func TestCustomize(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub", "etc/machine-id", "var/lib/dbus/machine-id"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte("baked"), 0o600)
	}
	os.MkdirAll(filepath.Join(root, "etc/systemd/system/timers.target.wants"), 0o755)
	os.Symlink("/lib/systemd/system/apt-daily.timer", filepath.Join(root, "etc/systemd/system/timers.target.wants/apt-daily.timer"))
	if err := Customize(root); err != nil {
		t.Fatal(err)
	}
	if keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*")); len(keys) != 0 {
		t.Fatalf("baked host keys left: %v", keys)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/machine-id")); len(b) != 0 {
		t.Fatalf("machine-id baked: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(root, "var/lib/dbus/machine-id")); !os.IsNotExist(err) {
		t.Fatal("dbus machine-id left")
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system/timers.target.wants/apt-daily.timer")); !os.IsNotExist(err) {
		t.Fatal("apt timer still wanted")
	}
	for _, masked := range []string{"apt-daily.timer", "systemd-timesyncd.service", "systemd-firstboot.service"} {
		if l, _ := os.Readlink(filepath.Join(root, "etc/systemd/system", masked)); l != "/dev/null" {
			t.Fatalf("%s not masked: %q", masked, l)
		}
	}
	for _, enabled := range []string{"sysinit.target.wants/banger-init.service", "multi-user.target.wants/banger-agent.service", "multi-user.target.wants/systemd-networkd.service"} {
		if _, err := os.Readlink(filepath.Join(root, "etc/systemd/system", enabled)); err != nil {
			t.Fatalf("%s not enabled: %v", enabled, err)
		}
	}
	fstab, _ := os.ReadFile(filepath.Join(root, "etc/fstab"))
	for _, l := range []string{LabelRoot, LabelWork, LabelSeed} {
		if !strings.Contains(string(fstab), "LABEL="+l) {
			t.Fatalf("fstab lacks %s:\n%s", l, fstab)
		}
	}
}

func TestKernelCmdlineHasNoSecrets(t *testing.T) {
	c := KernelCmdline("banger.ip=10.0.2.15/24")
	if !strings.Contains(c, "root=LABEL="+LabelRoot) || !strings.Contains(c, "console=ttyS0") || !strings.HasSuffix(c, "banger.ip=10.0.2.15/24") {
		t.Fatalf("cmdline: %s", c)
	}
}

func TestWorkSeedFingerprint(t *testing.T) {
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	empty, err := WorkSeedFingerprint(seed)
	if err != nil || empty == "" {
		t.Fatalf("missing seed: %q %v", empty, err)
	}
	os.MkdirAll(seed, 0o700)
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("PS1='$ '\n"), 0o644)
	a, _ := WorkSeedFingerprint(seed)
	b, _ := WorkSeedFingerprint(seed)
	if a != b || a == empty {
		t.Fatalf("not stable or equal to empty: %s %s %s", a, b, empty)
	}
	os.Chmod(filepath.Join(seed, ".bashrc"), 0o600)
	c, _ := WorkSeedFingerprint(seed)
	if c == a {
		t.Fatal("mode change not noticed")
	}
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("PS1='# '\n"), 0o600)
	d, _ := WorkSeedFingerprint(seed)
	if d == c {
		t.Fatal("content change not noticed")
	}
	os.Symlink(".bashrc", filepath.Join(seed, ".bash_profile"))
	e, _ := WorkSeedFingerprint(seed)
	if e == d {
		t.Fatal("new symlink not noticed")
	}
}

func fakeBzImage(version string) []byte {
	b := make([]byte, 0x1000)
	copy(b[0x202:], "HdrS")
	off := 0x800
	b[0x20e] = byte(off - 0x200)
	b[0x20f] = byte((off - 0x200) >> 8)
	copy(b[off:], version+" (debian-kernel@lists.debian.org) #1 SMP\x00")
	return b
}

func TestParseKernelVersion(t *testing.T) {
	got, err := ParseKernelVersion(fakeBzImage("6.1.0-28-cloud-amd64"))
	if err != nil || got != "6.1.0-28-cloud-amd64" {
		t.Fatalf("got %q %v", got, err)
	}
	if _, err := ParseKernelVersion(make([]byte, 0x1000)); err == nil {
		t.Fatal("accepted a file without a setup header")
	}
	if _, err := ParseKernelVersion([]byte("short")); err == nil {
		t.Fatal("accepted a short file")
	}
	// The real kernel of this host, when readable.
	if matches, _ := filepath.Glob("/boot/vmlinuz-*"); len(matches) > 0 {
		v, err := KernelVersion(matches[0])
		if err == nil && !strings.HasPrefix(filepath.Base(matches[0]), "vmlinuz-"+v) {
			t.Errorf("host kernel %s parsed as %q", matches[0], v)
		}
	}
}

func FuzzParseKernelVersion(f *testing.F) {
	f.Add(fakeBzImage("6.1.0"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseKernelVersion(b) })
}

// TestBaseFingerprintUnchanged pins the base image's fingerprint: adding
// the agent image must not invalidate base images or caches keyed by it.
func TestBaseFingerprintUnchanged(t *testing.T) {
	s := DefaultSpec("bookworm", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
	if got := s.Fingerprint(); got != "3eca6ac5b520feed4c4f1b4bbed8ea336b6a9401e2236f1e3d75721c9892a194" {
		t.Fatalf("base fingerprint changed: %s", got)
	}
}

func TestAgentSpecFingerprint(t *testing.T) {
	base := DefaultSpec("bookworm", "http://m/debian", "http://m/sec")
	a := AgentSpec("bookworm", "http://m/debian", "http://m/sec")
	if a.Fingerprint() == base.Fingerprint() || a.Name == base.Name {
		t.Fatal("agent spec not distinct from the base")
	}
	b := AgentSpec("bookworm", "http://m/debian", "http://m/sec")
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("fingerprint not stable")
	}
	// A different pinned version changes it; the order does not.
	b.NPM = append([]string(nil), a.NPM...)
	b.NPM[1] = "opencode-ai@0.0.1"
	if a.Fingerprint() == b.Fingerprint() {
		t.Fatal("npm version not part of the fingerprint")
	}
	b.NPM = append([]string(nil), a.NPM...)
	b.NPM[0], b.NPM[1] = b.NPM[1], b.NPM[0]
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("npm order changed the fingerprint")
	}
	for _, p := range a.NPM {
		if !strings.Contains(p, "@") || strings.HasSuffix(p, "@latest") || npmName(p) == p {
			t.Errorf("npm package %q is not pinned", p)
		}
	}
}

func TestHasService(t *testing.T) {
	if !HasService(`{"services":["opencode"]}`, ServiceOpencode) || HasService(`{}`, ServiceOpencode) || HasService("", ServiceOpencode) {
		t.Fatal("HasService")
	}
	if npmName("@anthropic-ai/claude-code@2.1.0") != "@anthropic-ai/claude-code" || npmName("opencode-ai@1") != "opencode-ai" {
		t.Fatal("npmName")
	}
}
