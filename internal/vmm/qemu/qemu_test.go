package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/vmm"
)

func TestArgs(t *testing.T) {
	spec := vmm.Spec{
		ID: "ab12cd34", ProcessName: "bg123456-ab12cd34", Dir: "/v/ab12cd34",
		Kernel: "/i/vmlinuz", Initrd: "/i/initrd.img", Cmdline: "console=ttyS0",
		Disks: []vmm.Disk{{Path: "/v/root.qcow2", Format: "qcow2", Backing: []vmm.Layer{{Path: "/i/rootfs.ext4", Format: "raw"}}}, {Path: "/v/seed.ext4", Format: "raw", ReadOnly: true}},
		CPUs:  2, MemoryMiB: 1024, Accel: "tcg", Egress: "none",
		Forwards: []vmm.Forward{{HostPort: 40022, GuestPort: 22}},
	}
	got := strings.Join(Args(spec), " ")
	for _, want := range []string{
		"-M microvm,acpi=on,memory-backend=mem -accel tcg,tb-size=128 -cpu max -smp 2 -m 1024 -object memory-backend-memfd,id=mem,size=1024M,share=on",
		"-device vmgenid,guid=auto",
		"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-chardev socket,id=console,path=/v/ab12cd34/console.sock,server=on,wait=off -serial chardev:console",
		"-chardev socket,id=qmp,path=/v/ab12cd34/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control",
		"-drive id=d0,if=none,driver=qcow2,discard=unmap,file.driver=file,file.filename=/v/root.qcow2,backing.driver=raw,backing.file.driver=file,backing.file.filename=/i/rootfs.ext4 -device virtio-blk-device,drive=d0",
		"-drive id=d1,if=none,driver=raw,discard=unmap,file.driver=file,file.filename=/v/seed.ext4,readonly=on",
		"-chardev socket,id=agent,path=/v/ab12cd34/agent.sock,server=on,wait=off",
		"-device virtserialport,chardev=agent,name=banger.agent",
		"-netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22",
		"-name bg123456-ab12cd34,process=bg123456-ab12cd34",
		"-kernel /i/vmlinuz -append console=ttyS0 -initrd /i/initrd.img",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	// Forking (-daemonize) and setuid (-runas) are what the sandbox
	// forbids: neither may appear.
	for _, bad := range []string{"-daemonize", "-runas", "-pidfile", "-incoming"} {
		if strings.Contains(got, bad) {
			t.Errorf("args contain %s:\n%s", bad, got)
		}
	}
	spec.ExtraSerialPorts = []string{"bench"}
	if got := strings.Join(Args(spec), " "); !strings.Contains(got, "-chardev socket,id=xport0,path=/v/ab12cd34/port-bench.sock,server=on,wait=off -device virtserialport,chardev=xport0,name=bench") {
		t.Errorf("extra serial port args wrong:\n%s", got)
	}
	spec.ExtraSerialPorts = nil
	spec.Accel, spec.Egress = "kvm", "all"
	got = strings.Join(Args(spec), " ")
	if !strings.Contains(got, "-accel kvm -cpu host") || strings.Contains(got, "tb-size") || strings.Contains(got, "restrict=on") {
		t.Errorf("kvm/egress all args wrong:\n%s", got)
	}
}

// splitOpts parses a QEMU option list the way QEMU does: a comma ends a
// value unless doubled.
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// optOf returns the value of key in the option list following flag
// whose list contains marker.
func optOf(args []string, flag, marker, key string) (string, bool) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] != flag || !strings.Contains(args[i+1], marker) {
			continue
		}
		for _, kv := range splitOpts(args[i+1]) {
			if k, v, ok := strings.Cut(kv, "="); ok && k == key {
				return v, true
			}
		}
	}
	return "", false
}

// A comma in a path must reach QEMU as part of the path, not start a
// new option (which could, e.g., turn a file name into "readonly=off"
// or a second file).
func TestArgsCommaPaths(t *testing.T) {
	dir := "/v/a,b=c"
	spec := vmm.Spec{
		ID: "x", ProcessName: "bg-x", Dir: dir, Kernel: "/i,k/vmlinuz", Initrd: "/i,k/initrd", Cmdline: "console=ttyS0",
		Disks: []vmm.Disk{{Path: dir + "/root.qcow2", Format: "qcow2", Backing: []vmm.Layer{{Path: "/i,k/rootfs,readonly=off", Format: "raw"}}}, {Path: dir + "/seed,x.ext4", Format: "raw", ReadOnly: true}},
		CPUs:  1, MemoryMiB: 256, Egress: "none",
	}
	args := Args(spec)
	for _, c := range []struct{ flag, marker, key, want string }{
		{"-drive", "id=d0", "file.filename", dir + "/root.qcow2"},
		{"-drive", "id=d0", "backing.file.filename", "/i,k/rootfs,readonly=off"},
		{"-drive", "id=d1", "file.filename", dir + "/seed,x.ext4"},
		{"-drive", "id=d1", "readonly", "on"},
		{"-chardev", "id=qmp", "path", dir + "/qmp.sock"},
		{"-chardev", "id=agent", "path", dir + "/agent.sock"},
		{"-chardev", "id=console", "path", dir + "/console.sock"},
	} {
		if got, ok := optOf(args, c.flag, c.marker, c.key); !ok || got != c.want {
			t.Errorf("%s %s: %s = %q (found %v), want %q\n%s", c.flag, c.marker, c.key, got, ok, c.want, strings.Join(args, " "))
		}
	}
	// -kernel and -initrd take their value whole (QEMU 7.2 does not split
	// them): doubling the comma there would name another file.
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "-kernel /i,k/vmlinuz ") || !strings.Contains(joined, "-initrd /i,k/initrd") {
		t.Errorf("kernel/initrd paths altered:\n%s", joined)
	}
	if strings.Count(joined, "readonly=on") != 1 {
		t.Errorf("a path smuggled an option in:\n%s", joined)
	}
}

func TestParseCPUkHz(t *testing.T) {
	for in, want := range map[string]int{
		"processor\t: 0\ncpu MHz\t\t: 2100.000\n": 2100000,
		"cpu MHz : 3392.412\ncpu MHz : 1.0\n":     3392412,
		"nothing here":                            2000000,
		"cpu MHz : garbage":                       2000000,
	} {
		if got := parseCPUkHz(in); got != want {
			t.Errorf("%q: got %d want %d", in, got, want)
		}
	}
}

func TestArgsTap(t *testing.T) {
	spec := vmm.Spec{
		ID: "ab12cd34", Dir: "/v/ab12cd34", Kernel: "/i/vmlinuz", CPUs: 1, MemoryMiB: 512, Accel: "tcg", Egress: "none",
		// Forwards are meaningless in tap mode and must not leak into args.
		Forwards: []vmm.Forward{{HostPort: 40022, GuestPort: 22}},
		Net:      vmm.Net{Mode: vmm.NetTap, TapDevice: "bg123456tab12cd", MAC: "0a:b6:ab:12:cd:34"},
	}
	got := strings.Join(Args(spec), " ")
	want := "-netdev tap,id=n0,ifname=bg123456tab12cd,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=0a:b6:ab:12:cd:34"
	if !strings.Contains(got, want) {
		t.Errorf("args lack %q:\n%s", want, got)
	}
	for _, bad := range []string{"hostfwd", "user,", "restrict"} {
		if strings.Contains(got, bad) {
			t.Errorf("tap args contain %q:\n%s", bad, got)
		}
	}
}

// vmFixture lays out an image directory (world-readable, as banger's
// images are) and a VM directory with its disks.
func vmFixture(t *testing.T) (vmm.Spec, string) {
	t.Helper()
	base := t.TempDir()
	img, dir := filepath.Join(base, "img"), filepath.Join(base, "vm")
	for _, d := range []string{img, dir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, mode os.FileMode) string {
		if err := os.WriteFile(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	spec := vmm.Spec{
		ID: "vm1", ProcessName: "bg-vm1", Dir: dir, Cmdline: "console=ttyS0", CPUs: 1, MemoryMiB: 256, Accel: "tcg", Egress: "none",
		Kernel: write(filepath.Join(img, "vmlinuz"), 0o644),
		Initrd: write(filepath.Join(img, "initrd.img"), 0o644),
		Disks: []vmm.Disk{
			// banger's image rootfs files are 0600: QEMU gets a read-only
			// descriptor and needs no right to the file.
			{Path: write(filepath.Join(dir, "root.qcow2"), 0o644), Format: "qcow2", Backing: []vmm.Layer{{Path: write(filepath.Join(img, "rootfs.ext4"), 0o600), Format: "raw"}}},
			{Path: write(filepath.Join(dir, "seed.ext4"), 0o600), Format: "raw", ReadOnly: true},
			{Path: write(filepath.Join(dir, "work.ext4"), 0o600), Format: "raw"},
		},
	}
	return spec, img
}

type owner struct {
	uid, gid uint32
	mode     os.FileMode
	nlink    uint64
}

func ownerOf(t *testing.T, p string) owner {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return owner{st.Uid, st.Gid, fi.Mode().Perm(), uint64(st.Nlink)}
}

// Run as root (the daemon's case), prepare hands the VM's own files to
// its user, readable by nobody else, and leaves the image's files alone;
// QEMU reaches every file through descriptors, so nothing on its command
// line is a path into banger's state.
func TestPrepareAsVMUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to hand files to another uid")
	}
	spec, img := vmFixture(t)
	spec.UID, spec.GID = 3000007, 3000007
	imgFiles := []string{spec.Kernel, spec.Initrd, spec.Disks[0].Backing[0].Path}
	before := map[string]owner{}
	for _, p := range imgFiles {
		before[p] = ownerOf(t, p)
	}
	ram, err := newMemfd("test", 256<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	l, err := prepare(spec, guestRAM{f: ram, kind: ramOwn})
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	for _, p := range []string{spec.Disks[0].Path, spec.Disks[1].Path, spec.Disks[2].Path} {
		if o := ownerOf(t, p); o.uid != 3000007 || o.gid != 3000007 || o.mode != 0o600 {
			t.Errorf("%s: %+v, want owned by 3000007 with mode 0600", filepath.Base(p), o)
		}
	}
	for _, p := range imgFiles {
		if o := ownerOf(t, p); o != before[p] {
			t.Errorf("image file %s changed: %+v -> %+v", filepath.Base(p), before[p], o)
		}
	}
	for _, s := range []string{"console.sock", "qmp.sock", "agent.sock"} {
		if o := ownerOf(t, filepath.Join(spec.Dir, s)); o.uid != 0 || o.mode&0o077 != 0 {
			t.Errorf("%s: %+v, want root's alone", s, o)
		}
	}
	joined := strings.Join(l.args, " ")
	if strings.Contains(joined, spec.Dir) || strings.Contains(joined, img) {
		t.Errorf("QEMU is told paths into the state directory:\n%s", joined)
	}
	// kernel, initrd; root disk read-only and read-write; seed
	// read-only; work disk twice; the root disk's backing; 3 sockets
	// (console, QMP, agent); guest RAM.
	if len(l.files) != 12 || l.ramFD != 14 {
		t.Errorf("%d inherited files, RAM fd %d; want 12, 14", len(l.files), l.ramFD)
	}
	for _, want := range []string{
		"-kernel /proc/self/fd/3 ", "-initrd /proc/self/fd/4",
		"-add-fd fd=5,set=1 -add-fd fd=6,set=1 -add-fd fd=7,set=2 -add-fd fd=8,set=3 -add-fd fd=9,set=3 -add-fd fd=10,set=4",
		"file.filename=/dev/fdset/1,backing.driver=raw,backing.file.driver=file,backing.file.filename=/dev/fdset/4",
		"file.filename=/dev/fdset/2,readonly=on", "file.filename=/dev/fdset/3",
		"-chardev socket,id=console,fd=11,server=on,wait=off",
		"socket,id=qmp,fd=12", "socket,id=agent,fd=13",
		"-object memory-backend-file,id=mem,size=256M,mem-path=/proc/self/fd/14,share=on",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
}

// An image file QEMU's user could not read is refused, never chmoded;
// and only files inside the VM directory ever change hands.
func TestPrepareRefuses(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to hand files to another uid")
	}
	spec, _ := vmFixture(t)
	spec.UID, spec.GID = 3000008, 3000008
	if err := os.Chmod(spec.Kernel, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := prepare(spec, guestRAM{})
	if err == nil || !strings.Contains(err.Error(), "chmod 0644") {
		t.Fatalf("root-only kernel: %v", err)
	}
	if o := ownerOf(t, spec.Kernel); o.mode != 0o600 || o.uid != 0 {
		t.Errorf("kernel changed: %+v", o)
	}
	os.Chmod(spec.Kernel, 0o644)
	shared := spec.Disks[0].Backing[0].Path
	spec.Disks[0].Path = shared // a disk that is not the VM's own
	if _, err := prepare(spec, guestRAM{}); err == nil || !strings.Contains(err.Error(), "not in the VM directory") {
		t.Fatalf("disk outside the VM dir: %v", err)
	}
	if o := ownerOf(t, shared); o.uid != 0 || o.mode != 0o600 {
		t.Errorf("shared file changed hands: %+v", o)
	}
}
