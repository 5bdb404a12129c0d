package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// A disk's backing chain is rendered as nested backing.* options, each
// layer with its own format; the path rendering and the descriptor
// rendering name the same layers.
func TestArgsBackingChain(t *testing.T) {
	spec := vmm.Spec{
		ID: "c", ProcessName: "bg-c", Dir: "/v/c", Kernel: "/i/vmlinuz", CPUs: 1, MemoryMiB: 512, Egress: "none",
		Disks: []vmm.Disk{{Path: "/v/c/root.qcow2", Format: "qcow2", Backing: []vmm.Layer{
			{Path: "/s/2/root.qcow2", Format: "qcow2"},
			{Path: "/s/1/root.qcow2", Format: "qcow2"},
			{Path: "/i/rootfs,x.ext4", Format: "raw"},
		}}, {Path: "/v/c/work.qcow2", Format: "qcow2", Backing: []vmm.Layer{{Path: "/s/2/work.ext4", Format: "raw"}}}},
	}
	args := Args(spec)
	for _, c := range []struct{ key, want string }{
		{"backing.driver", "qcow2"},
		{"backing.file.filename", "/s/2/root.qcow2"},
		{"backing.backing.driver", "qcow2"},
		{"backing.backing.file.filename", "/s/1/root.qcow2"},
		{"backing.backing.backing.driver", "raw"},
		{"backing.backing.backing.file.driver", "file"},
		{"backing.backing.backing.file.filename", "/i/rootfs,x.ext4"},
	} {
		if got, ok := optOf(args, "-drive", "id=d0", c.key); !ok || got != c.want {
			t.Errorf("d0 %s = %q (%v), want %q", c.key, got, ok, c.want)
		}
	}
	if _, ok := optOf(args, "-drive", "id=d0", "backing.backing.backing.backing.driver"); ok {
		t.Error("chain rendered deeper than given")
	}
	if got, _ := optOf(args, "-drive", "id=d1", "backing.file.filename"); got != "/s/2/work.ext4" {
		t.Errorf("d1 backing %q", got)
	}
	// No chain: the overlay's header names its backing (as before).
	spec.Disks[0].Backing = nil
	if _, ok := optOf(Args(spec), "-drive", "id=d0", "backing.driver"); ok {
		t.Error("backing rendered for a disk without a chain")
	}
}

// Every layer of every chain reaches QEMU as its own read-only
// descriptor in its own fd set, named in the chain's order.
func TestPrepareChainDescriptors(t *testing.T) {
	spec, img := vmFixture(t)
	l2 := filepath.Join(img, "layer2.qcow2")
	os.WriteFile(l2, []byte("y"), 0o600)
	spec.Disks[0].Backing = append([]vmm.Layer{{Path: l2, Format: "qcow2"}}, spec.Disks[0].Backing...)
	l, err := prepare(spec, guestRAM{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	joined := strings.Join(l.args, " ")
	// disks: sets 1-3 (fds 5..9), layers: sets 4, 5 (fds 10, 11).
	for _, want := range []string{
		"-add-fd fd=10,set=4 -add-fd fd=11,set=5",
		"backing.driver=qcow2,backing.file.driver=file,backing.file.filename=/dev/fdset/4,backing.backing.driver=raw,backing.backing.file.driver=file,backing.backing.file.filename=/dev/fdset/5",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	for _, i := range []int{10 - 3, 11 - 3} {
		f := l.files[i]
		if fl, err := unixFlags(f); err != nil || fl&os.O_RDWR != 0 || fl&os.O_WRONLY != 0 {
			t.Errorf("layer %s opened with flags %#x (%v)", f.Name(), fl, err)
		}
	}
	// Without a memfd from the driver, QEMU makes its own (Args).
	if !strings.Contains(joined, "-object memory-backend-memfd,id=mem,size=256M,share=on") {
		t.Errorf("memory backend:\n%s", joined)
	}
}

// The RAM backend follows the memfd's kind, and a restore waits for its
// state (-incoming defer) on an otherwise identical command line.
func TestArgsMemoryAndIncoming(t *testing.T) {
	spec := vmm.Spec{ID: "m", ProcessName: "bg-m", Dir: "/v/m", Kernel: "/k", CPUs: 1, MemoryMiB: 768, Accel: "tcg"}
	boot := render(spec, sources{mem: "/proc/self/fd/9", layers: nil})
	spec.Restore = &vmm.Restore{Dir: "/s/1", Share: true}
	restored := render(spec, sources{mem: "/proc/self/fd/9", memPrivate: true})
	b, r := strings.Join(boot, " "), strings.Join(restored, " ")
	if !strings.Contains(b, "-object memory-backend-file,id=mem,size=768M,mem-path=/proc/self/fd/9,share=on") || strings.Contains(b, "-incoming") {
		t.Errorf("boot:\n%s", b)
	}
	if !strings.Contains(r, "mem-path=/proc/self/fd/9,share=off") || !strings.HasSuffix(r, "-device vmgenid,guid=auto -incoming defer") {
		t.Errorf("restore:\n%s", r)
	}
	if strings.Replace(strings.TrimSuffix(r, " -incoming defer"), "share=off", "share=on", 1) != b {
		t.Errorf("restore differs from boot beyond RAM sharing and -incoming:\n%s\n%s", b, r)
	}
}

func unixFlags(f *os.File) (int, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			var n int
			for _, c := range strings.TrimSpace(v) {
				n = n*8 + int(c-'0')
			}
			return n, nil
		}
	}
	return 0, nil
}

func validMeta() snapMeta {
	return snapMeta{Version: snapMetaVersion, Compat: "qemu 7.2.22; accel tcg; cpu max", RAMInFile: true,
		MemBytes: 64 << 20, StateBytes: 12, MemoryMiB: 64, CPUs: 1, Accel: "tcg", Kernel: "/i/vmlinuz", Cmdline: "console=ttyS0"}
}

// writeSnap lays out a snapshot directory as Save does.
func writeSnap(t *testing.T, m snapMeta, state []byte) string {
	t.Helper()
	dir := t.TempDir()
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, fileSnapMeta), b, 0o600)
	os.WriteFile(filepath.Join(dir, fileSnapState), state, 0o600)
	if m.RAMInFile {
		if err := system.CreateSparse(filepath.Join(dir, fileSnapMem), m.MemBytes); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A truncated, foreign or damaged snapshot is refused with an error
// naming the directory and what is wrong.
func TestCheckSnapshot(t *testing.T) {
	d := &Driver{}
	state := append([]byte("QEVM"), 0, 0, 0, 3, 1, 2, 3, 4)
	if err := d.CheckSnapshot(writeSnap(t, validMeta(), state)); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	streamed := validMeta()
	streamed.RAMInFile, streamed.MemBytes = false, 0
	if err := d.CheckSnapshot(writeSnap(t, streamed, state)); err != nil {
		t.Fatalf("good snapshot with RAM in the stream: %v", err)
	}
	cases := []struct {
		name   string
		break_ func(dir string)
		want   string
	}{
		{"truncated memory", func(dir string) { os.Truncate(filepath.Join(dir, fileSnapMem), 1<<20) }, "memory file is 1048576 bytes"},
		{"memory missing", func(dir string) { os.Remove(filepath.Join(dir, fileSnapMem)) }, "no such file"},
		{"truncated state", func(dir string) { os.Truncate(filepath.Join(dir, fileSnapState), 5) }, "state file is 5 bytes"},
		{"bad magic", func(dir string) {
			os.WriteFile(filepath.Join(dir, fileSnapState), append([]byte("XXXX"), state[4:]...), 0o600)
		}, "migration magic"},
		{"metadata garbage", func(dir string) { os.WriteFile(filepath.Join(dir, fileSnapMeta), []byte("{\"version\":1,"), 0o600) }, "parse metadata"},
		{"metadata huge", func(dir string) {
			os.WriteFile(filepath.Join(dir, fileSnapMeta), bytes.Repeat([]byte(" "), maxSnapMeta+10), 0o600)
		}, "larger than"},
		{"metadata missing", func(dir string) { os.Remove(filepath.Join(dir, fileSnapMeta)) }, "no such file"},
		{"not a QEMU snapshot", func(dir string) {
			os.WriteFile(filepath.Join(dir, fileSnapMeta), []byte(`{"version":1,"vmm":"firecracker"}`), 0o600)
		}, "unknown field"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeSnap(t, validMeta(), state)
			c.break_(dir)
			err := d.CheckSnapshot(dir)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "unusable") {
				t.Fatalf("err = %v, want one naming %s and %q", err, dir, c.want)
			}
		})
	}
}

// Start refuses a restore whose machine differs before anything runs.
func TestRestoreRefusesOtherMachine(t *testing.T) {
	dir := writeSnap(t, validMeta(), append([]byte("QEVM"), 1, 2, 3, 4, 5, 6, 7, 8))
	d := &Driver{Binary: "/nonexistent/qemu"}
	vmDir, _ := os.MkdirTemp("", "qr")
	defer os.RemoveAll(vmDir)
	_, err := d.Start(context.Background(), vmm.Spec{ID: "r", Dir: vmDir, CPUs: 1, MemoryMiB: 128, Accel: "tcg", Restore: &vmm.Restore{Dir: dir}})
	if err == nil || !strings.Contains(err.Error(), "saved with 64 MiB") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("err = %v", err)
	}
}

func FuzzSnapshotMeta(f *testing.F) {
	good, _ := json.Marshal(validMeta())
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"memory_mib":-1,"cpus":1,"state_bytes":4,"accel":"tcg","kernel":"k"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSnapMeta(b)
		if err != nil {
			return
		}
		// Whatever parses is a machine a restore can describe.
		if m.Version != snapMetaVersion || m.MemoryMiB <= 0 || m.CPUs <= 0 || m.StateBytes < 4 || m.Kernel == "" ||
			(m.RAMInFile && m.MemBytes != int64(m.MemoryMiB)<<20) || (!m.RAMInFile && m.MemBytes != 0) {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func TestParseQEMUVersion(t *testing.T) {
	for in, want := range map[string]string{
		"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright": "7.2.22",
		"QEMU emulator version 9.0.0\n":                                             "9.0.0",
	} {
		if got, err := parseQEMUVersion(in); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	if _, err := parseQEMUVersion("garbage"); err == nil {
		t.Error("garbage accepted")
	}
}

// SnapshotCompat names version, accelerator and CPU model, and asks the
// binary once.
func TestSnapshotCompat(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "qemu")
	count := filepath.Join(dir, "count")
	os.WriteFile(bin, []byte("#!/bin/sh\necho x >> "+count+"\necho 'QEMU emulator version 7.2.22 (Debian)'\n"), 0o755)
	d := &Driver{Binary: bin}
	for i := 0; i < 2; i++ {
		got, err := d.SnapshotCompat(context.Background(), "tcg")
		if err != nil || got != "qemu 7.2.22; accel tcg; cpu max" {
			t.Fatalf("%q %v", got, err)
		}
	}
	if got, _ := d.SnapshotCompat(context.Background(), "kvm"); !strings.HasPrefix(got, "qemu 7.2.22; accel kvm; cpu host ") {
		t.Fatalf("kvm: %q", got)
	}
	if b, _ := os.ReadFile(count); strings.Count(string(b), "x") != 1 {
		t.Fatalf("--version ran %d times", strings.Count(string(b), "x"))
	}
}

func TestOverlayDisk(t *testing.T) {
	d := &Driver{}
	f := &system.Fake{Strict: true}
	f.On("qemu-img create", "", nil)
	layer := vmm.Disk{Path: "/s/1/root.qcow2", Format: "qcow2", Backing: []vmm.Layer{{Path: "/i/rootfs.ext4", Format: "raw"}}}
	got, err := d.OverlayDisk(context.Background(), f, layer, "/v/x/root.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if calls := f.Calls(); len(calls) != 1 || calls[0].Cmd != "qemu-img create -q -f qcow2 -b /s/1/root.qcow2 -F qcow2 /v/x/root.qcow2" {
		t.Fatalf("calls %+v", calls)
	}
	want := []vmm.Layer{{Path: "/s/1/root.qcow2", Format: "qcow2"}, {Path: "/i/rootfs.ext4", Format: "raw"}}
	if got.Path != "/v/x/root.qcow2" || got.Format != "qcow2" || len(got.Backing) != 2 || got.Backing[0] != want[0] || got.Backing[1] != want[1] {
		t.Fatalf("disk %+v", got)
	}
	if len(layer.Backing) != 1 {
		t.Fatal("layer's chain modified")
	}
}
