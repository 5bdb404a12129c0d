package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/escapetest"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// A work seed comes from places a guest or an image author controls.
// These tests play such an author: each plants a link that names a
// "host" directory (a temporary directory outside every tree banger
// owns) and checks that nothing there is read, written or re-moded.

// hostDir is a stand-in for a host directory an attacker wants to reach:
// it holds a secret file and a private subdirectory.
func hostDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519"), []byte("HOST PRIVATE KEY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sudoers.d"), 0o750); err != nil {
		t.Fatal(err)
	}
	return dir
}

func seedImage(t *testing.T) (store.Image, string) {
	t.Helper()
	imgDir := t.TempDir()
	seed := filepath.Join(imgDir, image.DirWorkSeed)
	if err := os.MkdirAll(seed, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("# seed bashrc\n"), 0o644)
	return store.Image{Dir: imgDir}, seed
}

// A seed holding `.banger -> /etc/sudoers.d` made banger write the mark
// file into that host directory.
func TestMakeWorkDiskLinkAtBangerDir(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	d := testDaemon(t, nil)
	host := hostDir(t)
	before := escapetest.Snapshot(t, host)
	img, seed := seedImage(t)
	if err := os.Symlink(filepath.Join(host, "sudoers.d"), filepath.Join(seed, ".banger")); err != nil {
		t.Fatal(err)
	}
	vmDir := t.TempDir()
	fp, err := d.makeWorkDisk(context.Background(), img, vmDir, 64<<20)
	if after := escapetest.Snapshot(t, host); after != before {
		t.Fatalf("host directory changed:\n%s\nwas:\n%s", after, before)
	}
	if err != nil {
		t.Fatalf("a seed with a .banger link still gets a work disk (the link is replaced): %v", err)
	}
	disk := filepath.Join(vmDir, paths.FileWorkDisk)
	if got := debugfsCat(t, disk, "/"+image.FileWorkSeedMark); strings.TrimSpace(got) != fp {
		t.Fatalf("mark on disk %q, want %s", got, fp)
	}
}

// `.banger/work-seed -> /any/host/file` overwrote that file.
func TestMakeWorkDiskLinkAtMark(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	d := testDaemon(t, nil)
	host := hostDir(t)
	before := escapetest.Snapshot(t, host)
	img, seed := seedImage(t)
	os.Mkdir(filepath.Join(seed, ".banger"), 0o700)
	if err := os.Symlink(filepath.Join(host, "id_ed25519"), filepath.Join(seed, image.FileWorkSeedMark)); err != nil {
		t.Fatal(err)
	}
	vmDir := t.TempDir()
	fp, err := d.makeWorkDisk(context.Background(), img, vmDir, 64<<20)
	if after := escapetest.Snapshot(t, host); after != before {
		t.Fatalf("host file changed:\n%s\nwas:\n%s", after, before)
	}
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(vmDir, paths.FileWorkDisk)
	if got := debugfsCat(t, disk, "/"+image.FileWorkSeedMark); strings.TrimSpace(got) != fp {
		t.Fatalf("mark on disk %q, want %s", got, fp)
	}
}

// A seed that is itself a link (`work-seed -> /root`) copied the host's
// /root, private keys included, into every new VM's work disk, and
// chmodded it.
func TestMakeWorkDiskSeedRootIsLink(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	d := testDaemon(t, nil)
	host := hostDir(t)
	before := escapetest.Snapshot(t, host)
	hostMode, _ := os.Stat(host)
	imgDir := t.TempDir()
	if err := os.Symlink(host, filepath.Join(imgDir, image.DirWorkSeed)); err != nil {
		t.Fatal(err)
	}
	vmDir := t.TempDir()
	_, err := d.makeWorkDisk(context.Background(), store.Image{Dir: imgDir}, vmDir, 64<<20)
	if after := escapetest.Snapshot(t, host); after != before {
		t.Fatalf("host directory changed:\n%s\nwas:\n%s", after, before)
	}
	if st, _ := os.Stat(host); st.Mode() != hostMode.Mode() {
		t.Fatalf("host directory re-moded: %v, was %v", st.Mode(), hostMode.Mode())
	}
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("a seed that is a link must be refused with a clear error, got %v", err)
	}
	if out, _ := exec.Command("debugfs", "-R", "cat /id_ed25519", filepath.Join(vmDir, paths.FileWorkDisk)).Output(); bytes.Contains(out, []byte("HOST PRIVATE KEY")) {
		t.Fatal("the host's private key is on the work disk")
	}
	if _, err := imageSeedFingerprint(store.Image{Dir: imgDir}); err == nil {
		t.Fatal("fingerprinting a seed that is a link must fail")
	}
}

// Links inside a seed are the guest's business: they stay links on the
// work disk and are never followed on the host.
func TestMakeWorkDiskKeepsLinksAsLinks(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	d := testDaemon(t, nil)
	host := hostDir(t)
	img, seed := seedImage(t)
	os.Symlink(host, filepath.Join(seed, "hostdir"))
	os.Symlink(filepath.Join(host, "id_ed25519"), filepath.Join(seed, "key"))
	os.Symlink(".bashrc", filepath.Join(seed, ".profile"))
	vmDir := t.TempDir()
	if _, err := d.makeWorkDisk(context.Background(), img, vmDir, 64<<20); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(vmDir, paths.FileWorkDisk)
	for p, target := range map[string]string{"/hostdir": host, "/key": filepath.Join(host, "id_ed25519"), "/.profile": ".bashrc"} {
		out, err := exec.Command("debugfs", "-R", "stat "+p, disk).Output()
		if err != nil || !strings.Contains(string(out), "Type: symlink") {
			t.Errorf("%s on the work disk: want a link, got %s %v", p, out, err)
			continue
		}
		// A long target lives in a data block: read it by inode.
		var ino int
		fmt.Sscanf(string(out), "Inode: %d", &ino)
		body, _ := exec.Command("debugfs", "-R", fmt.Sprintf("cat <%d>", ino), disk).Output()
		if !strings.Contains(string(out), "Fast link dest: \""+target+"\"") && string(body) != target {
			t.Errorf("%s on the work disk: want a link to %s, got %s / %q", p, target, out, body)
		}
	}
	if out, _ := exec.Command("debugfs", "-R", "ls -p /hostdir/", disk).CombinedOutput(); bytes.Contains(out, []byte("id_ed25519")) {
		t.Fatalf("the host directory was copied through the link: %s", out)
	}
}

// image import takes a directory from the user, possibly written by a
// stranger: its files must be regular files and its seed a real
// directory, never links to host files.
func TestImportImageRefusesLinks(t *testing.T) {
	ctx := context.Background()
	host := hostDir(t)
	before := escapetest.Snapshot(t, host)
	good := func(t *testing.T) string {
		src := t.TempDir()
		fakeKernel(t, filepath.Join(src, image.FileKernel), "6.1.0-1-cloud-amd64")
		for _, f := range []string{image.FileRootfs, image.FileInitrd, image.FileManifest} {
			os.WriteFile(filepath.Join(src, f), []byte("{}"), 0o644)
		}
		image.WriteMeta(src, image.Meta{Name: "imp", Fingerprint: "fp"})
		os.MkdirAll(filepath.Join(src, image.DirWorkSeed), 0o700)
		return src
	}
	for name, plant := range map[string]func(src string){
		"rootfs is a link": func(src string) {
			os.Remove(filepath.Join(src, image.FileRootfs))
			os.Symlink(filepath.Join(host, "id_ed25519"), filepath.Join(src, image.FileRootfs))
		},
		"kernel is a link": func(src string) {
			os.Remove(filepath.Join(src, image.FileKernel))
			os.Symlink(filepath.Join(host, "id_ed25519"), filepath.Join(src, image.FileKernel))
		},
		"initrd is a link": func(src string) {
			os.Remove(filepath.Join(src, image.FileInitrd))
			os.Symlink(filepath.Join(host, "id_ed25519"), filepath.Join(src, image.FileInitrd))
		},
		"vmlinux is a link": func(src string) { os.Symlink(filepath.Join(host, "id_ed25519"), filepath.Join(src, image.FileVmlinux)) },
		"work seed is a link": func(src string) {
			os.Remove(filepath.Join(src, image.DirWorkSeed))
			os.Symlink(host, filepath.Join(src, image.DirWorkSeed))
		},
		"work seed is a file": func(src string) {
			os.Remove(filepath.Join(src, image.DirWorkSeed))
			os.WriteFile(filepath.Join(src, image.DirWorkSeed), nil, 0o644)
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := testDaemon(t, nil)
			d.layout = paths.Layout{ImagesDir: filepath.Join(t.TempDir(), "images")}
			src := good(t)
			plant(src)
			img, err := d.imageEngine().ImportImage(ctx, src)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, "not a regular file") && !strings.Contains(ae.Message, "not a directory") {
				t.Fatalf("import: %+v %v", img, err)
			}
			if entries, _ := os.ReadDir(d.layout.ImagesDir); len(entries) != 0 {
				t.Fatalf("import left %v behind", entries)
			}
			if _, err := d.store.GetImage(ctx, "imp"); err == nil {
				t.Fatal("image registered")
			}
		})
	}
	// A link inside the seed is kept as a link, not followed.
	t.Run("link inside the seed", func(t *testing.T) {
		d := testDaemon(t, nil)
		d.layout = paths.Layout{ImagesDir: filepath.Join(t.TempDir(), "images")}
		src := good(t)
		os.Symlink(host, filepath.Join(src, image.DirWorkSeed, "hostdir"))
		img, err := d.imageEngine().ImportImage(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		l, err := os.Readlink(filepath.Join(img.Dir, image.DirWorkSeed, "hostdir"))
		if err != nil || l != host {
			t.Fatalf("link in the seed: %q %v", l, err)
		}
	})
	if after := escapetest.Snapshot(t, host); after != before {
		t.Fatalf("host directory changed:\n%s", after)
	}
}

// craftedRootfs makes an ext4 image whose /root holds a link "y" to
// target and, under the same name, a regular file saying PWNED: two
// directory entries named y. A valid filesystem never has that; a
// hand-made one can, and debugfs rdump then writes the file through the
// link it has just created.
func craftedRootfs(t *testing.T, p, target string) {
	t.Helper()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "root"), 0o700)
	os.MkdirAll(filepath.Join(tree, "usr/lib"), 0o755)
	os.Symlink("usr/lib", filepath.Join(tree, "lib"))
	os.WriteFile(filepath.Join(tree, "root/x"), []byte("PWNED\n"), 0o644)
	os.Symlink(target, filepath.Join(tree, "root/y"))
	run := func(args ...string) string {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
		return string(out)
	}
	// 1 KiB blocks and no metadata checksums keep the hand edit simple.
	run("mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^metadata_csum,^dir_index", "-d", tree, p, "16M")
	var xIno int
	for _, l := range strings.Split(run("debugfs", "-R", "ls -p /root", p), "\n") {
		f := strings.Split(l, "/")
		if len(f) == 8 && f[5] == "x" {
			xIno, _ = strconv.Atoi(f[1])
		}
	}
	run("debugfs", "-w", "-R", fmt.Sprintf("ln <%d> /root/z", xIno), p)
	run("debugfs", "-w", "-R", "unlink /root/x", p)
	blocks := strings.Fields(run("debugfs", "-R", "blocks /root", p))
	blk, _ := strconv.Atoi(blocks[len(blocks)-1])
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1024)
	f.ReadAt(buf, int64(blk)*1024)
	for off := 0; off+8 < len(buf); {
		rec := int(binary.LittleEndian.Uint16(buf[off+4:]))
		if buf[off+6] == 1 && buf[off+8] == 'z' {
			buf[off+8] = 'y'
		}
		if rec == 0 {
			break
		}
		off += rec
	}
	f.WriteAt(buf, int64(blk)*1024)
}

// image register read /root out of the image with debugfs rdump, which
// writes through links it created itself: a crafted image overwrote a
// host file with its own bytes.
func TestRegisterImageCraftedRootDoesNotWriteHost(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	host := hostDir(t)
	before := escapetest.Snapshot(t, host)
	src := t.TempDir()
	const kver = "6.1.0-77-cloud-amd64"
	kernel, rootfs := filepath.Join(src, "vmlinuz"), filepath.Join(src, "root.ext4")
	fakeKernel(t, kernel, kver)
	craftedRootfs(t, rootfs, filepath.Join(host, "id_ed25519"))
	mods := filepath.Join(src, kver)
	os.MkdirAll(mods, 0o755)

	d := testDaemon(t, nil)
	d.layout = paths.Layout{ImagesDir: filepath.Join(t.TempDir(), "images")}
	_, err := d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "crafted", Rootfs: rootfs, Kernel: kernel, Modules: mods})
	if after := escapetest.Snapshot(t, host); after != before {
		t.Fatalf("host file changed by register:\n%s\nwas:\n%s", after, before)
	}
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, "twice") {
		t.Fatalf("a crafted /root must be refused: %v", err)
	}
	if entries, _ := os.ReadDir(d.layout.ImagesDir); len(entries) != 0 {
		t.Fatalf("register left %v behind", entries)
	}
}

// An image whose /root is a link (to the host's /root, say) got a work
// seed that was that link: every VM's work disk then held the host's
// /root.
func TestRegisterImageRootIsLink(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	host := hostDir(t)
	src := t.TempDir()
	const kver = "6.1.0-77-cloud-amd64"
	kernel, rootfs := filepath.Join(src, "vmlinuz"), filepath.Join(src, "root.ext4")
	fakeKernel(t, kernel, kver)
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "usr/lib/modules", kver), 0o755)
	os.Symlink("usr/lib", filepath.Join(tree, "lib"))
	os.Symlink(host, filepath.Join(tree, "root"))
	// The package list is a link to a host file: debugfs resolves it
	// inside the image, so the host file is never read.
	os.MkdirAll(filepath.Join(tree, "var/lib/dpkg"), 0o755)
	os.WriteFile(filepath.Join(host, "status"), []byte("Package: hostsecret\nStatus: install ok installed\nVersion: 1\n"), 0o644)
	os.Symlink(filepath.Join(host, "status"), filepath.Join(tree, "var/lib/dpkg/status"))
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, rootfs, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	d := testDaemon(t, nil)
	d.layout = paths.Layout{ImagesDir: filepath.Join(t.TempDir(), "images")}
	img, err := d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "linked", Rootfs: rootfs, Kernel: kernel})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, "/root") {
		fi, _ := os.Lstat(filepath.Join(img.Dir, image.DirWorkSeed))
		t.Fatalf("an image whose /root is a link must be refused: %v (seed %v)", err, fi)
	}
	if entries, _ := os.ReadDir(d.layout.ImagesDir); len(entries) != 0 {
		t.Fatalf("register left %v behind", entries)
	}

	// Without the /root link the image registers, and the package list
	// comes from the image, not from the host file its link names.
	os.Remove(filepath.Join(tree, "root"))
	os.Mkdir(filepath.Join(tree, "root"), 0o700)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, rootfs, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	img, err = d.imageEngine().RegisterImage(ctx, api.RegisterImageRequest{Name: "linked", Rootfs: rootfs, Kernel: kernel})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(img.Manifest, "hostsecret") {
		t.Fatalf("the host's file was read through the image's link: %s", img.Manifest)
	}
}

// derive takes the provisioning VM's /root back as a tar stream the guest
// writes: entries that go through links the stream planted must not
// land on the host, and links stay links.
func TestExtractWorkSeedHostileTar(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	for name, entries := range map[string][]tar.Header{
		"mark through .banger link": {
			{Name: ".banger", Typeflag: tar.TypeSymlink, Linkname: "HOST/sudoers.d"},
			{Name: ".banger/work-seed", Typeflag: tar.TypeReg, Size: 6},
		},
		"file through a dir link": {
			{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "HOST"},
			{Name: "x/id_ed25519", Typeflag: tar.TypeReg, Size: 6},
		},
		"dot is a link": {
			{Name: ".", Typeflag: tar.TypeSymlink, Linkname: "HOST"},
		},
		"dot dot": {
			{Name: "../escape", Typeflag: tar.TypeReg, Size: 6},
		},
	} {
		t.Run(name, func(t *testing.T) {
			host := hostDir(t)
			before := escapetest.Snapshot(t, host)
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range entries {
				h.Linkname = strings.Replace(h.Linkname, "HOST", host, 1)
				h.Mode = 0o644
				tw.WriteHeader(&h)
				if h.Size > 0 {
					tw.Write([]byte("PWNED\n"))
				}
			}
			tw.Close()
			seed := filepath.Join(t.TempDir(), image.DirWorkSeed)
			err := extractWorkSeed(ctx, &buf, seed, 4<<30)
			if after := escapetest.Snapshot(t, host); after != before {
				t.Fatalf("host changed:\n%s", after)
			}
			if err == nil {
				t.Fatal("a stream writing through a link must be refused")
			}
		})
	}
	// A stream with links (and no writes through them) is a fine seed;
	// the VM made from it gets the links as links and its own mark.
	host := hostDir(t)
	before := escapetest.Snapshot(t, host)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: ".banger", Typeflag: tar.TypeSymlink, Linkname: filepath.Join(host, "sudoers.d")})
	tw.WriteHeader(&tar.Header{Name: "hostkey", Typeflag: tar.TypeSymlink, Linkname: filepath.Join(host, "id_ed25519")})
	tw.Close()
	imgDir := t.TempDir()
	if err := extractWorkSeed(ctx, &buf, filepath.Join(imgDir, image.DirWorkSeed), 4<<30); err != nil {
		t.Fatal(err)
	}
	d := testDaemon(t, nil)
	vmDir := t.TempDir()
	if _, err := d.makeWorkDisk(ctx, store.Image{Dir: imgDir}, vmDir, 64<<20); err != nil {
		t.Fatal(err)
	}
	if after := escapetest.Snapshot(t, host); after != before {
		t.Fatalf("host changed:\n%s", after)
	}
}
