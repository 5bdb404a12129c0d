package image

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/escapetest"
	"github.com/bangerdev/banger/internal/image/voidfixture"
	"github.com/bangerdev/banger/internal/system"
)

// An image (a tarball, a bootstrapped tree) names paths of its own; none
// of them may lead banger to a host file. These tests play a hostile
// image author whose links point at a "host" directory (a temporary
// directory outside the tree) and check that nothing there is read,
// written, removed or re-moded.

// fakeHost is a stand-in for the host's /etc and /root: SSH host keys,
// an sshd_config, runit and systemd directories, a package database and
// an os-release that says Void, each a target an image may link to.
func fakeHost(t *testing.T) string {
	t.Helper()
	h := t.TempDir()
	files := map[string]string{
		"ssh/ssh_host_ed25519_key":         "HOST KEY",
		"ssh/sshd_config":                  "PermitRootLogin no\n",
		"runit/runsvdir/default/.keep":     "",
		"sv/sshd/run":                      "#!/bin/sh\n",
		"systemd/system/.keep":             "",
		"wants/banger-agent.service":       "host unit",
		"wants/getty@tty1.service":         "host unit",
		"lib/modules/.keep":                "",
		"root/.ssh/id_ed25519":             "HOST PRIVATE KEY",
		"xbps/pkgdb-0.38.plist":            `<plist><dict><key>hostsecret</key><dict><key>pkgver</key><string>hostsecret-1_1</string></dict></dict></plist>`,
		"os-release":                       "ID=void\n",
		"etc/os-release":                   "ID=void\n",
		"etc/ssh/sshd_config":              "host\n",
		"dpkg/status":                      "Package: hostsecret\nStatus: install ok installed\nVersion: 1\n",
		"boot/vmlinuz-6.1.0-9-cloud-amd64": "HOST KERNEL",
		"local/bin/.keep":                  "",
	}
	for p, body := range files {
		f := filepath.Join(h, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// noHostSecret fails if anything banger wrote under dir carries a byte
// string that only the fake host has.
func noHostSecret(t *testing.T, dir string) {
	t.Helper()
	// The image's work seed must be a directory of its own, never a
	// link to one of the host's.
	if fi, err := os.Lstat(filepath.Join(dir, DirWorkSeed)); err == nil && !fi.IsDir() {
		t.Errorf("the work seed is %v, not a directory", fi.Mode())
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		for _, s := range dataContains(t, p, "hostsecret", "HOST KERNEL", "HOST PRIVATE KEY", "HOST KEY") {
			t.Errorf("%s holds %q from the host", p, s)
		}
		return nil
	})
}

// dataContains returns the needles found in the file at path, reading
// only its data regions: the image's root filesystem is gigabytes of
// holes (all zeros, which hold no secret), and reading them is most of
// what these tests would otherwise spend.
func dataContains(t *testing.T, path string, needles ...string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	overlap := 0
	for _, n := range needles {
		overlap = max(overlap, len(n)-1)
	}
	found := map[string]bool{}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < st.Size(); {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			start = off // no SEEK_DATA here: read everything
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			end = st.Size()
		}
		// Chunks overlap by a needle's length less one, so that a needle
		// across a chunk boundary is still seen.
		for pos := start; pos < end; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			for _, s := range needles {
				if bytes.Contains(buf[:n], []byte(s)) {
					found[s] = true
				}
			}
			if err != nil || n == 0 {
				break
			}
			if pos+int64(n) >= end {
				break
			}
			pos += int64(max(n-overlap, 1))
		}
		off = end
	}
	var out []string
	for _, s := range needles {
		if found[s] {
			out = append(out, s)
		}
	}
	return out
}

// A Void tarball with `etc/ssh -> /etc/ssh` made banger delete the host's
// SSH host keys and rewrite its sshd_config; the other links reach the
// host through the other customize steps.
func TestBuildVoidHostileLinks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("extracting a rootfs with its ownership needs root")
	}
	ctx := context.Background()
	for link, target := range map[string]string{
		"etc/ssh":             "ssh",
		"etc/ssh/sshd_config": "ssh/sshd_config",
		"etc":                 "etc",
		"etc/runit":           "runit",
		"etc/sv":              "sv",
		"usr/lib":             "lib",
		"root":                "root",
		"var/db/xbps":         "xbps",
		"etc/os-release":      "os-release",
	} {
		t.Run(link, func(t *testing.T) {
			host := fakeHost(t)
			before := escapetest.Snapshot(t, host)
			p, err := voidfixture.WriteWithLinks(t.TempDir(), voidfixture.Release, voidfixture.Release,
				map[string]string{link: filepath.Join(host, target)})
			if err != nil {
				t.Fatal(err)
			}
			b := &Builder{Runner: system.Exec{}}
			spec := VoidSpec{Name: "void", RootfsTar: p.RootfsTar, Kernel: p.Kernel, Initrd: p.Initrd, Modules: p.Modules}
			out := filepath.Join(t.TempDir(), "img")
			stage := func(name string, fn func(context.Context) error) error { return fn(ctx) }
			_, err = b.BuildVoid(ctx, spec, voidfixture.Release, "fp", filepath.Join(t.TempDir(), "work"), out, stage)
			if after := escapetest.Snapshot(t, host); after != before {
				t.Fatalf("the host changed:\n%s\nwas:\n%s", after, before)
			}
			noHostSecret(t, out)
			if err == nil {
				t.Fatalf("a tarball whose %s leaves the tree must be refused", link)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// debianTree lays out what mmdebstrap leaves (just the parts the build
// steps read), then turns each path in links into a link to its value.
func debianTree(t *testing.T, root string, links map[string]string) {
	t.Helper()
	const kver = "6.1.0-9-cloud-amd64"
	files := map[string]string{
		"boot/vmlinuz-" + kver:             string(fakeBzImage(kver)) + string(lz4Legacy) + "payload",
		"boot/initrd.img-" + kver:          "initrd",
		"usr/lib/modules/" + kver + "/dep": "",
		"var/lib/dpkg/status":              "Package: git\nStatus: install ok installed\nVersion: 1\n",
		"root/.bashrc":                     "# root\n",
		"etc/ssh/sshd_config":              "PermitRootLogin yes\n",
		"etc/ssh/ssh_host_rsa_key":         "baked",
		"etc/systemd/system/getty.target.wants/getty@tty1.service": "",
		"var/lib/dbus/.keep":  "",
		"usr/local/bin/.keep": "",
	}
	for p, body := range files {
		f := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, []byte(body), 0o644)
	}
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	os.Symlink("/etc/machine-id", filepath.Join(root, "var/lib/dbus/machine-id"))
	for l, target := range links {
		os.RemoveAll(filepath.Join(root, l))
		os.MkdirAll(filepath.Dir(filepath.Join(root, l)), 0o755)
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeBootstrap answers the commands of a Debian build: mmdebstrap lays
// out a (hostile) tree, lz4 yields an ELF header, mkfs does nothing.
func fakeBootstrap(t *testing.T, links map[string]string) *system.Fake {
	return &system.Fake{Handler: func(ctx context.Context, c system.FakeCall) ([]byte, error) {
		switch c.Argv[0] {
		case "mmdebstrap":
			for i, a := range c.Argv {
				if a == "bookworm" {
					debianTree(t, c.Argv[i+1], links)
				}
			}
		case "lz4":
			return []byte("\x7fELF"), nil
		case "npm":
			return fakeNPM(ctx, c)
		}
		return nil, nil
	}}
}

// The Debian path: every build step works through the tree, so a link
// in it (a Debian package, or a mirror that is not what it claims) never
// leads a step to a host file.
func TestBuildDebianHostileLinks(t *testing.T) {
	ctx := context.Background()
	// The clean tree builds: the fake steps are enough for a build.
	b := &Builder{Runner: fakeBootstrap(t, nil)}
	spec := AgentSpec("bookworm", "http://deb.invalid/debian", "")
	stage := func(name string, fn func(context.Context) error) error { return fn(ctx) }
	if _, err := b.Build(ctx, spec, filepath.Join(t.TempDir(), "work"), filepath.Join(t.TempDir(), "img"), stage); err != nil {
		t.Fatalf("clean tree: %v", err)
	}
	for link, target := range map[string]string{
		"etc/ssh":                                    "ssh",
		"etc/ssh/sshd_config.d":                      "ssh",
		"etc/systemd/system":                         "systemd/system",
		"etc/systemd/system/getty.target.wants":      "wants",
		"etc/systemd/system/multi-user.target.wants": "wants",
		"boot/vmlinuz-6.1.0-9-cloud-amd64":           "boot/vmlinuz-6.1.0-9-cloud-amd64",
		"boot":                                       "boot",
		"var/lib/dpkg":                               "dpkg",
		"var/lib/dpkg/status":                        "dpkg/status",
		"root":                                       "root",
		"usr/local":                                  "local",
		"usr/local/bin":                              "local/bin",
		"etc/hostname":                               "etc/os-release",
		"run":                                        "root",
	} {
		t.Run(link, func(t *testing.T) {
			host := fakeHost(t)
			before := escapetest.Snapshot(t, host)
			b := &Builder{Runner: fakeBootstrap(t, map[string]string{link: filepath.Join(host, target)})}
			out := filepath.Join(t.TempDir(), "img")
			_, err := b.Build(ctx, spec, filepath.Join(t.TempDir(), "work"), out, stage)
			if after := escapetest.Snapshot(t, host); after != before {
				t.Fatalf("the host changed:\n%s\nwas:\n%s", after, before)
			}
			noHostSecret(t, out)
			t.Logf("result: %v", err)
		})
	}
}

// A seed (or any tree CopyTree copies) that is itself a link is refused,
// not copied through.
func TestCopyTreeAndFingerprintRefuseLinkRoot(t *testing.T) {
	host := fakeHost(t)
	dir := t.TempDir()
	link := filepath.Join(dir, "seed")
	os.Symlink(filepath.Join(host, "root"), link)
	if err := CopyTree(link, filepath.Join(dir, "copy")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("CopyTree of a link: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "copy")); err == nil {
		t.Fatal("CopyTree made something of a link")
	}
	if _, err := WorkSeedFingerprint(link); err == nil {
		t.Fatal("WorkSeedFingerprint of a link must fail")
	}
}

// The fingerprint of a seed is stored in every VM's work disk; it must
// not change across banger versions for the same tree.
func TestWorkSeedFingerprintStable(t *testing.T) {
	seed := filepath.Join(t.TempDir(), "seed")
	os.MkdirAll(filepath.Join(seed, ".config/x"), 0o755)
	os.Chmod(seed, 0o700)
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("PS1='$ '\n"), 0o644)
	os.WriteFile(filepath.Join(seed, ".config/x/y"), []byte("y"), 0o600)
	os.Symlink(".bashrc", filepath.Join(seed, ".profile"))
	os.Symlink("/etc/hostname", filepath.Join(seed, "abs"))
	for p, m := range map[string]fs.FileMode{".config": 0o755, ".config/x": 0o750, ".bashrc": 0o644, ".config/x/y": 0o600} {
		os.Chmod(filepath.Join(seed, p), m)
	}
	fp, err := WorkSeedFingerprint(seed)
	if err != nil {
		t.Fatal(err)
	}
	if fp != stableSeedFingerprint {
		t.Fatalf("fingerprint %s, want %s", fp, stableSeedFingerprint)
	}
}

// stableSeedFingerprint is what banger before the os.Root rewrite
// computed for the tree of TestWorkSeedFingerprintStable.
const stableSeedFingerprint = "53fdf630aa2cdb209812661ed9ced24e0d4ed2dd547c06b4bdcbde602e46e8f4"

func TestParseDebugfsLs(t *testing.T) {
	good := "/12/040700/0/0/.//\n/2/040755/0/0/..//\n/0/000000/0/0/gone/0/\n/14/120777/0/0/y/20/\n/13/100644/0/0/x/6/\n\n"
	got, err := ParseDebugfsLs([]byte(good))
	if err != nil || len(got) != 4 || got[2].Name != "y" || !got[2].IsSymlink() || !got[0].IsDir() || got[3].Inode != 13 {
		t.Fatalf("parse: %+v %v", got, err)
	}
	if err := checkDirListing("/root", 12, got); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		out  string
		want string
	}{
		"name with a slash":   {"/12/040700/0/0/.//\n/2/040755/0/0/..//\n/13/100644/0/0/../../etc/x/6/\n", "unexpected debugfs listing line"},
		"name with a newline": {"/12/040700/0/0/.//\n/2/040755/0/0/..//\n/13/100644/0/0/a\nb/6/\n", "unexpected debugfs listing line"},
		"twice":               {"/12/040700/0/0/.//\n/2/040755/0/0/..//\n/14/120777/0/0/y/20/\n/13/100644/0/0/y/6/\n", "twice"},
		"dot is a file":       {"/12/100644/0/0/./0/\n/2/040755/0/0/..//\n", "not a directory"},
		"dot is another dir":  {"/13/040700/0/0/.//\n/2/040755/0/0/..//\n", "another directory"},
		"no dot":              {"", "no . or .."},
	} {
		entries, err := ParseDebugfsLs([]byte(tc.out))
		if err == nil {
			err = checkDirListing("/root", 12, entries)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", name, err, tc.want)
		}
	}
}

// FuzzParseDebugfsLs: the listing comes from a filesystem image anyone
// may have made.
func FuzzParseDebugfsLs(f *testing.F) {
	f.Add([]byte("/12/040700/0/0/.//\n/2/040755/0/0/..//\n/13/100644/0/0/x/6/\n"))
	f.Add([]byte("/13/100644/0/0/a/6/\n/13/1/0/0/"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseDebugfsLs(b)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Name == "" || strings.ContainsAny(e.Name, "/\n") || e.Inode == 0 {
				t.Fatalf("bad entry %+v", e)
			}
		}
		_ = checkDirListing("/root", 12, entries)
	})
}

// The mark replaces whatever the seed put at .banger or at the mark.
func TestMarkWorkSeedReplaces(t *testing.T) {
	host := fakeHost(t)
	for name, plant := range map[string]func(dir string){
		".banger is a file": func(dir string) { os.WriteFile(filepath.Join(dir, ".banger"), []byte("x"), 0o644) },
		".banger is a link": func(dir string) { os.Symlink(filepath.Join(host, "ssh"), filepath.Join(dir, ".banger")) },
		".banger is a local link": func(dir string) {
			os.Mkdir(filepath.Join(dir, "d"), 0o755)
			os.Symlink("d", filepath.Join(dir, ".banger"))
		},
		"mark is a directory": func(dir string) { os.MkdirAll(filepath.Join(dir, FileWorkSeedMark, "x"), 0o755) },
		"mark is a link": func(dir string) {
			os.Mkdir(filepath.Join(dir, ".banger"), 0)
			os.Symlink(filepath.Join(host, "os-release"), filepath.Join(dir, FileWorkSeedMark))
		},
	} {
		t.Run(name, func(t *testing.T) {
			before := escapetest.Snapshot(t, host)
			dir := t.TempDir()
			plant(dir)
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			if err := MarkWorkSeed(root, "fp"); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Lstat(filepath.Join(dir, ".banger")); err != nil || !fi.IsDir() {
				t.Fatalf(".banger: %v %v", fi, err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, FileWorkSeedMark)); err != nil || string(b) != "fp\n" {
				t.Fatalf("mark: %q %v", b, err)
			}
			if after := escapetest.Snapshot(t, host); after != before {
				t.Fatalf("host changed:\n%s", after)
			}
		})
	}
}

// The secret scan skips holes, not data: a needle across a chunk
// boundary or after a hole is found.
func TestDataContains(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("HOST KEY"), 1<<20-4)  // across the first chunk's end
	f.WriteAt([]byte("hostsecret"), 64<<20) // after a hole
	f.Truncate(128 << 20)
	f.Close()
	got := strings.Join(dataContains(t, p, "hostsecret", "HOST KERNEL", "HOST KEY"), ",")
	if got != "hostsecret,HOST KEY" {
		t.Fatalf("found %q", got)
	}
}
