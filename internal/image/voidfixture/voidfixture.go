// Package voidfixture writes a small stand-in for a Void Linux release
// (rootfs tarball, kernel, initramfs and modules directory) so the Void
// image plumbing is tested without Void's repositories, which are not
// reachable from banger's build machines. The kernel is a bzImage setup
// header only: the fixture is assembled and inspected, never booted.
package voidfixture

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Release is the kernel release the fixture's parts agree on.
const Release = "6.6.58_1"

// Paths are the fixture's inputs, as `image build --distro void` takes them.
type Paths struct {
	RootfsTar, Kernel, Initrd, Modules string
}

// Write creates the fixture under dir. kernelRelease and initrdRelease
// let a test make parts that do not match.
func Write(dir, kernelRelease, initrdRelease string) (Paths, error) {
	return WriteWithLinks(dir, kernelRelease, initrdRelease, nil)
}

// WriteWithLinks is Write with a hostile rootfs tarball: each key of
// links (a path in the tree, "etc/ssh") becomes a symlink to its value
// instead of what the fixture has there, and whatever the fixture had
// below it is left out. Tests point the links at paths outside the tree
// to check that building the image never reaches through them.
func WriteWithLinks(dir, kernelRelease, initrdRelease string, links map[string]string) (Paths, error) {
	p := Paths{
		RootfsTar: filepath.Join(dir, "void-rootfs.tar.gz"),
		Kernel:    filepath.Join(dir, "vmlinuz-"+kernelRelease),
		Initrd:    filepath.Join(dir, "initramfs-"+initrdRelease+".img"),
		Modules:   filepath.Join(dir, "modules", Release),
	}
	if err := os.WriteFile(p.RootfsTar, rootfsTar(links), 0o644); err != nil {
		return p, err
	}
	if err := os.WriteFile(p.Kernel, Kernel(kernelRelease), 0o644); err != nil {
		return p, err
	}
	if err := os.WriteFile(p.Initrd, initrd(initrdRelease), 0o644); err != nil {
		return p, err
	}
	for name, body := range map[string]string{
		"modules.dep":                            "kernel/drivers/block/virtio_blk.ko.zst:\n",
		"kernel/drivers/block/virtio_blk.ko.zst": "not really a module",
	} {
		f := filepath.Join(p.Modules, name)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return p, err
		}
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			return p, err
		}
	}
	return p, nil
}

// Kernel is a bzImage setup header announcing release.
func Kernel(release string) []byte {
	b := make([]byte, 0x1000)
	copy(b[0x202:], "HdrS")
	const verOff = 0x400
	binary.LittleEndian.PutUint16(b[0x20e:], verOff-0x200)
	copy(b[verOff:], release+" (fixture@void) #1 SMP PREEMPT_DYNAMIC\x00")
	return b
}

const pkgdb = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>_XBPS_ALTERNATIVES_</key>
	<dict>
		<key>sh</key>
		<dict><key>pkgver</key><string>ignored</string></dict>
	</dict>
	<key>base-files</key>
	<dict>
		<key>automatic-install</key>
		<true/>
		<key>pkgver</key>
		<string>base-files-0.143_1</string>
	</dict>
	<key>openssh</key>
	<dict>
		<key>pkgver</key>
		<string>openssh-9.8p1_1</string>
		<key>run_depends</key>
		<array><string>libcrypto3>=3.3.1_1</string></array>
	</dict>
	<key>runit-void</key>
	<dict>
		<key>pkgver</key>
		<string>runit-void-20231124_1</string>
	</dict>
</dict>
</plist>
`

func rootfsTar(links map[string]string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	replaced := func(name string) bool {
		name = strings.TrimSuffix(name, "/")
		for l := range links {
			if name == l || strings.HasPrefix(name, l+"/") {
				return true
			}
		}
		return false
	}
	add := func(h *tar.Header, body string) {
		if replaced(h.Name) {
			return
		}
		h.Size = int64(len(body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		_ = tw.WriteHeader(h)
		_, _ = tw.Write([]byte(body))
	}
	dir := func(name string, mode int64) {
		add(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: mode}, "")
	}
	for _, d := range []string{"etc", "etc/ssh", "etc/sv", "etc/sv/sshd", "etc/runit", "etc/runit/runsvdir", "etc/runit/runsvdir/default", "usr", "usr/bin", "usr/lib", "var", "var/db", "var/db/xbps", "dev", "proc", "sys", "run", "tmp"} {
		dir(d, 0o755)
	}
	dir("root", 0o700)
	add(&tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib"}, "")
	add(&tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg}, "NAME=\"Void\"\nID=\"void\"\nPRETTY_NAME=\"Void Linux\"\n")
	add(&tar.Header{Name: "etc/ssh/sshd_config", Typeflag: tar.TypeReg}, "PermitRootLogin prohibit-password\n")
	add(&tar.Header{Name: "etc/ssh/ssh_host_ed25519_key", Typeflag: tar.TypeReg, Mode: 0o600}, "baked key that must go")
	add(&tar.Header{Name: "etc/sv/sshd/run", Typeflag: tar.TypeReg, Mode: 0o755}, "#!/bin/sh\nexec /usr/bin/sshd -D\n")
	add(&tar.Header{Name: "usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755}, "#!/bin/sh\n")
	add(&tar.Header{Name: "usr/bin/sudo-link", Typeflag: tar.TypeLink, Linkname: "usr/bin/su"}, "")
	add(&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, "")
	add(&tar.Header{Name: "root/.bashrc", Typeflag: tar.TypeReg}, "# void root\n")
	add(&tar.Header{Name: "var/db/xbps/pkgdb-0.38.plist", Typeflag: tar.TypeReg}, pkgdb)
	names := make([]string, 0, len(links))
	for l := range links {
		names = append(names, l)
	}
	sort.Strings(names)
	for _, l := range names {
		_ = tw.WriteHeader(&tar.Header{Name: l, Typeflag: tar.TypeSymlink, Linkname: links[l], Mode: 0o777})
	}
	_ = tw.Close()
	_ = zw.Close()
	return buf.Bytes()
}

// initrd is an uncompressed early cpio (as microcode updates come)
// followed by a gzip-compressed main archive holding the modules.
func initrd(release string) []byte {
	var out bytes.Buffer
	out.Write(cpio([]string{"kernel", "kernel/x86", "kernel/x86/microcode"}))
	zw := gzip.NewWriter(&out)
	zw.Write(cpio([]string{"usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/" + release, "usr/lib/modules/" + release + "/modules.dep", "init"}))
	zw.Close()
	return out.Bytes()
}

// cpio writes a newc archive of empty entries named names.
func cpio(names []string) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for i, n := range append(names, "TRAILER!!!") {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", i+1, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(n)+1, 0)
		b.WriteString(n)
		b.WriteByte(0)
		pad()
	}
	for b.Len()%512 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}
