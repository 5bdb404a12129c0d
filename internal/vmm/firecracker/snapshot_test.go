package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/vmm"
)

// fakeCall is one line of the fake's fake-calls.log.
type fakeCall struct {
	call   string // "PUT /snapshot/load"
	status int
	body   string
}

func readCalls(t *testing.T, dir string) []fakeCall {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "fake-calls.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []fakeCall
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(line, " ", 4)
		st, _ := strconv.Atoi(f[2])
		c := fakeCall{call: f[0] + " " + f[1], status: st}
		if len(f) == 4 {
			c.body = f[3]
		}
		out = append(out, c)
	}
	return out
}

func callNames(calls []fakeCall) []string {
	var n []string
	for _, c := range calls {
		n = append(n, c.call)
	}
	return n
}

func findCall(t *testing.T, calls []fakeCall, name string) fakeCall {
	t.Helper()
	for _, c := range calls {
		if c.call == name {
			return c
		}
	}
	t.Fatalf("no %s in %q", name, callNames(calls))
	return fakeCall{}
}

// bootForSnapshot boots a VM under the fake and saves it into a new
// snapshot directory.
func bootForSnapshot(t *testing.T, d *Driver) (srcDir, snapDir string, saved vmm.Saved) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srcDir = shortDir(t)
	proc, err := d.Start(ctx, testSpec(t, srcDir))
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	t.Cleanup(func() { d.Stop(context.Background(), srcDir, proc, true, 0) })
	snapDir = filepath.Join(shortDir(t), "snap")
	os.Mkdir(snapDir, 0o700)
	saved, err = d.Save(ctx, srcDir, proc, snapDir)
	if err != nil {
		t.Fatalf("save: %v", err)
	}
	if d.Alive(proc) {
		t.Fatal("firecracker still runs after Save")
	}
	return srcDir, snapDir, saved
}

// Save pauses, writes a full snapshot into dst with exactly the bodies
// the swagger defines, ends the VMM and leaves a snapshot CheckSnapshot
// accepts.
func TestSave(t *testing.T) {
	d := &Driver{Binary: fakeBinary(t)}
	srcDir, snapDir, saved := bootForSnapshot(t, d)
	calls := readCalls(t, srcDir)
	// After the boot: what Save asked, in order.
	var tail []string
	for i, c := range calls {
		if c.call == "PUT /actions" {
			tail = callNames(calls[i+1:])
			break
		}
	}
	if want := []string{"GET /", "GET /vm/config", "PATCH /vm", "PUT /snapshot/create"}; !reflect.DeepEqual(tail, want) {
		t.Fatalf("save calls %q, want %q", tail, want)
	}
	if c := findCall(t, calls, "PATCH /vm"); c.body != `{"state":"Paused"}` || c.status != 204 {
		t.Errorf("pause: %+v", c)
	}
	wantCreate := `{"snapshot_type":"Full","snapshot_path":"` + snapDir + `/fc-vmstate","mem_file_path":"` + snapDir + `/fc-memory"}`
	if c := findCall(t, calls, "PUT /snapshot/create"); c.body != wantCreate || c.status != 204 {
		t.Errorf("create: %+v\nwant body %s", c, wantCreate)
	}
	for _, f := range []string{FileSnapMeta, FileSnapState, FileSnapMem} {
		fi, err := os.Stat(filepath.Join(snapDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 0600", f, fi.Mode().Perm())
		}
	}
	if err := d.CheckSnapshot(snapDir); err != nil {
		t.Fatalf("check: %v", err)
	}
	meta, err := readSnapshot(snapDir)
	if err != nil {
		t.Fatal(err)
	}
	wantDrives := []Drive{
		{DriveID: "rootfs", PathOnHost: "fc-rootfs.img", IsRootDevice: true},
		{DriveID: "disk1", PathOnHost: "fc-disk1.img", IsReadOnly: true},
		{DriveID: "disk2", PathOnHost: "fc-disk2.img"},
	}
	if meta.MemoryMiB != 512 || meta.VCPUs != 2 || meta.Jailed || meta.Version != strings.TrimPrefix(strings.TrimSpace(swaggerVersion), "v") ||
		!reflect.DeepEqual(meta.Drives, wantDrives) || meta.VsockUDS != "vsock.sock" || len(meta.Network) != 1 || meta.Network[0].HostDevName != "bgtap0" {
		t.Errorf("metadata %+v", meta)
	}
	if meta.Memory.Size != 512<<20 || saved.MemoryBytes <= 0 || saved.MemoryBytes > meta.Memory.Size || saved.Bytes < saved.MemoryBytes {
		t.Errorf("saved %+v, memory file %d", saved, meta.Memory.Size)
	}
}

// restoreSpec is a new VM (its own directory, disks and TAP) to restore
// a snapshot into.
func restoreSpec(t *testing.T, snapDir string, share bool) vmm.Spec {
	t.Helper()
	spec := testSpec(t, shortDir(t))
	spec.Net.TapDevice = "bgtap1"
	spec.Kernel, spec.Cmdline = "", ""
	spec.Restore = &vmm.Restore{Dir: snapDir, Share: share}
	return spec
}

// A restore starts Firecracker without boot configuration, loads the
// snapshot with resume, moves the NIC to the new VM's TAP, and the
// guest's vsock socket (saved under a relative name) lands in the new
// VM's directory, where the agent answers.
func TestRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := &Driver{Binary: fakeBinary(t)}
	_, snapDir, _ := bootForSnapshot(t, d)
	for _, share := range []bool{true, false} {
		spec := restoreSpec(t, snapDir, share)
		proc, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatalf("restore (share %v): %v", share, err)
		}
		calls := readCalls(t, spec.Dir)
		if want := []string{"GET /", "PUT /logger", "PUT /metrics", "PUT /snapshot/load"}; !reflect.DeepEqual(callNames(calls), want) {
			t.Fatalf("restore calls %q, want %q", callNames(calls), want)
		}
		mem := snapDir + "/fc-memory"
		if !share {
			mem = spec.Dir + "/fc-restore.mem"
			if fi, err := os.Stat(mem); err != nil || fi.Size() != 512<<20 {
				t.Fatalf("private memory copy: %v", err)
			}
		}
		wantLoad := `{"snapshot_path":"` + snapDir + `/fc-vmstate","mem_backend":{"backend_type":"File","backend_path":"` + mem + `"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"bgtap1"}]}`
		if c := calls[3]; c.body != wantLoad || c.status != 204 {
			t.Errorf("load: %+v\nwant body %s", c, wantLoad)
		}
		if s, err := Status(ctx, spec.Dir, proc); err != nil || s != "Running" {
			t.Fatalf("status %q %v", s, err)
		}
		c, err := agentclient.WaitReady(ctx, func(ctx context.Context) (net.Conn, error) { return d.DialAgent(ctx, spec.Dir) }, 3*time.Second)
		if err != nil {
			t.Fatalf("agent of the restored VM: %v", err)
		}
		c.Close()
		// The drives Firecracker reopened are the new VM's own disks.
		for i, dk := range spec.Disks {
			if got, _ := os.Readlink(filepath.Join(spec.Dir, drivePath(i, false))); got != dk.Path {
				t.Errorf("drive %d links to %q, want %q", i, got, dk.Path)
			}
		}
		if err := d.Stop(ctx, spec.Dir, proc, true, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// A load Firecracker refuses (400) fails Start with its fault message
// and leaves no process and no private memory copy.
func TestRestoreLoadFailsLeavesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := &Driver{Binary: fakeBinary(t)}
	_, snapDir, _ := bootForSnapshot(t, d)
	spec := restoreSpec(t, snapDir, false)
	os.WriteFile(filepath.Join(spec.Dir, "fake-load-fails"), nil, 0o600)
	_, err := d.Start(ctx, spec)
	if err == nil || !strings.Contains(err.Error(), "load snapshot "+snapDir) || !strings.Contains(err.Error(), "400: Load snapshot error") || !strings.Contains(err.Error(), "injected by the test") {
		t.Fatalf("want the load's fault, got %v", err)
	}
	pidData, err := os.ReadFile(filepath.Join(spec.Dir, "fake-pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(string(pidData))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("firecracker %d still exists after a failed load: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, fileRestoreMem)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("private memory copy left behind: %v", err)
	}
	if c := readCalls(t, spec.Dir); c[len(c)-1].call != "PUT /snapshot/load" || c[len(c)-1].status != 400 {
		t.Fatalf("calls %+v", c)
	}
}

// What Start refuses before launching anything: a snapshot that does
// not check out, or a machine unlike the saved one.
func TestRestoreRefusedBeforeLaunch(t *testing.T) {
	ctx := context.Background()
	d := &Driver{Binary: fakeBinary(t)}
	_, snapDir, _ := bootForSnapshot(t, d)
	spec := restoreSpec(t, snapDir, true)
	spec.MemoryMiB = 1024
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "512 MiB") {
		t.Fatalf("other memory size: %v", err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, "fake-pid")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("firecracker was launched")
	}
	os.Truncate(filepath.Join(snapDir, FileSnapMem), 4096)
	spec = restoreSpec(t, snapDir, true)
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated memory: %v", err)
	}
}

func writeMeta(t *testing.T, dir string, meta snapshotMeta) {
	t.Helper()
	data, _ := json.Marshal(meta)
	if err := os.WriteFile(filepath.Join(dir, FileSnapMeta), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCheckSnapshot(t *testing.T) {
	d := &Driver{}
	good := func(t *testing.T) (string, snapshotMeta) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, FileSnapState), []byte("device state"), 0o600)
		os.WriteFile(filepath.Join(dir, FileSnapMem), make([]byte, 1<<20), 0o600)
		st, _ := sumFile(filepath.Join(dir, FileSnapState), true)
		meta := snapshotMeta{Format: metaFormat, Version: "1.16.1", MemoryMiB: 1, VCPUs: 1,
			Drives: []Drive{{DriveID: "rootfs", PathOnHost: "fc-rootfs.img", IsRootDevice: true}},
			State:  st, Memory: fileSum{Size: 1 << 20}}
		writeMeta(t, dir, meta)
		return dir, meta
	}
	dir, _ := good(t)
	if err := d.CheckSnapshot(dir); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	cases := []struct {
		name string
		mod  func(dir string, m snapshotMeta)
		want string
	}{
		{"no metadata", func(dir string, m snapshotMeta) { os.Remove(filepath.Join(dir, FileSnapMeta)) }, "no Firecracker snapshot metadata"},
		{"garbage metadata", func(dir string, m snapshotMeta) {
			os.WriteFile(filepath.Join(dir, FileSnapMeta), []byte("{not json"), 0o600)
		}, "parse"},
		{"huge metadata", func(dir string, m snapshotMeta) {
			os.WriteFile(filepath.Join(dir, FileSnapMeta), []byte(`{"format":1,"x":"`+strings.Repeat("a", maxMetaBytes)+`"}`), 0o600)
		}, "larger than"},
		{"other format", func(dir string, m snapshotMeta) { m.Format = 9; writeMeta(t, dir, m) }, "format 9"},
		{"impossible machine", func(dir string, m snapshotMeta) { m.VCPUs = 0; writeMeta(t, dir, m) }, "impossible machine"},
		{"truncated memory", func(dir string, m snapshotMeta) { os.Truncate(filepath.Join(dir, FileSnapMem), 4096) }, "fc-memory is truncated"},
		{"empty memory", func(dir string, m snapshotMeta) { os.Truncate(filepath.Join(dir, FileSnapMem), 0) }, "fc-memory is truncated"},
		{"missing state", func(dir string, m snapshotMeta) { os.Remove(filepath.Join(dir, FileSnapState)) }, "no such file"},
		{"changed state", func(dir string, m snapshotMeta) {
			os.WriteFile(filepath.Join(dir, FileSnapState), []byte("device stat3"), 0o600)
		}, "fc-vmstate is truncated or changed"},
		{"state is a directory", func(dir string, m snapshotMeta) {
			os.Remove(filepath.Join(dir, FileSnapState))
			os.Mkdir(filepath.Join(dir, FileSnapState), 0o700)
		}, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, m := good(t)
			c.mod(dir, m)
			err := d.CheckSnapshot(dir)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("got %v, want %q naming the snapshot", err, c.want)
			}
		})
	}
}

// planLoad: the overrides exist from the version that added them; before
// it, a restore that needs one is refused with what would have been
// needed. Disks cannot be moved at all.
func TestPlanLoad(t *testing.T) {
	dir := shortDir(t)
	spec := testSpec(t, dir)
	spec.Restore = &vmm.Restore{Dir: "/snaps/s1", Share: true}
	p, err := planStart(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := snapshotMeta{MemoryMiB: 512, VCPUs: 2, Drives: p.drives, VsockUDS: "vsock.sock",
		Network: []NetworkInterface{{IfaceID: "eth0", HostDevName: "bgtap0"}}}
	v18, v112, v116 := [3]int{1, 8, 0}, [3]int{1, 12, 0}, [3]int{1, 16, 1}

	// Same TAP (a parked VM waking): nothing to override, any version.
	load, err := planLoad(p, spec, base, nil, v18)
	if err != nil {
		t.Fatal(err)
	}
	want := SnapshotLoad{SnapshotPath: "/snaps/s1/fc-vmstate", MemBackend: MemoryBackend{"File", "/snaps/s1/fc-memory"}, ResumeVM: true}
	if !reflect.DeepEqual(load, want) {
		t.Fatalf("load %+v", load)
	}
	other := base
	other.Network = []NetworkInterface{{IfaceID: "eth0", HostDevName: "bgtap7"}}
	if _, err := planLoad(p, spec, other, nil, v18); err == nil || !strings.Contains(err.Error(), "network_overrides needs Firecracker 1.12") {
		t.Fatalf("1.8 with another TAP: %v", err)
	}
	load, err = planLoad(p, spec, other, nil, v112)
	if err != nil || !reflect.DeepEqual(load.NetworkOverrides, []NetworkOverride{{IfaceID: "eth0", HostDevName: "bgtap0"}}) || load.VsockOverride != nil {
		t.Fatalf("1.12: %+v %v", load, err)
	}
	// A socket saved under another path (an older banger's absolute one).
	abs := base
	abs.VsockUDS = "/var/lib/banger/vms/old/vsock.sock"
	if _, err := planLoad(p, spec, abs, nil, v112); err == nil || !strings.Contains(err.Error(), "vsock_override needs Firecracker 1.16") {
		t.Fatalf("1.12 with another vsock path: %v", err)
	}
	if load, err := planLoad(p, spec, abs, nil, v116); err != nil || load.VsockOverride == nil || load.VsockOverride.UDSPath != "vsock.sock" {
		t.Fatalf("1.16: %+v %v", load, err)
	}
	b, _ := json.Marshal(SnapshotLoad{SnapshotPath: "/s", MemBackend: MemoryBackend{"File", "/m"}, ResumeVM: true, VsockOverride: &VsockOverride{"v.sock"}})
	if string(b) != `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true,"vsock_override":{"uds_path":"v.sock"}}` {
		t.Fatalf("body %s", b)
	}

	refuse := []struct {
		name string
		mod  func(m *snapshotMeta)
		want string
	}{
		{"legacy absolute drive", func(m *snapshotMeta) {
			m.Drives = append([]Drive(nil), m.Drives...)
			m.Drives[0].PathOnHost = "/var/lib/banger/vms/old/root.ext4"
		}, "reopens a snapshot's disks at their saved paths"},
		{"disk count", func(m *snapshotMeta) { m.Drives = m.Drives[:2] }, "2 disks, this VM 3"},
		{"read-only flag", func(m *snapshotMeta) {
			m.Drives = append([]Drive(nil), m.Drives...)
			m.Drives[1].IsReadOnly = false
		}, "flags differ"},
		{"memory", func(m *snapshotMeta) { m.MemoryMiB = 256 }, "256 MiB"},
		{"cpus", func(m *snapshotMeta) { m.VCPUs = 1 }, "1 vCPUs"},
		{"jailed snapshot", func(m *snapshotMeta) { m.Jailed = true }, "under the jailer and cannot be restored without"},
		{"other interface", func(m *snapshotMeta) { m.Network = []NetworkInterface{{IfaceID: "eth1", HostDevName: "x"}} }, `"eth1"`},
	}
	for _, c := range refuse {
		m := base
		c.mod(&m)
		if _, err := planLoad(p, spec, m, nil, v116); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// Without Share the memory is the VM's own copy.
	spec.Restore.Share = false
	if load, _ := planLoad(p, spec, base, nil, v116); load.MemBackend.BackendPath != filepath.Join(dir, fileRestoreMem) {
		t.Fatalf("private memory at %q", load.MemBackend.BackendPath)
	}
}

// Under the jailer every path Firecracker is given is an in-jail one:
// Save writes /save.* in the jail and the files are moved out to dst;
// a restore links the snapshot in as /restore.* (the memory hard-linked
// and shared when Share), and the in-jail drive and vsock names are the
// same in every jail, so no override is needed for them.
func TestJailSnapshotPaths(t *testing.T) {
	dir := shortDir(t)
	spec := testSpec(t, dir)
	snap := t.TempDir()
	spec.Restore = &vmm.Restore{Dir: snap, Share: true}
	base := t.TempDir()
	var disks []string
	for _, dk := range spec.Disks {
		disks = append(disks, dk.Path)
	}
	jail, err := PlanJail(JailerConfig{ChrootBase: base, UID: jailUID(), GID: jailUID()}, "/usr/bin/firecracker", spec.ID, "", "", disks)
	if err != nil {
		t.Fatal(err)
	}
	jail.addSnapshot(snap, true)
	p, err := planStart(spec, &jail)
	if err != nil {
		t.Fatal(err)
	}
	meta := snapshotMeta{MemoryMiB: 512, VCPUs: 2, Jailed: true, Drives: p.drives, VsockUDS: "/vsock.sock",
		Network: []NetworkInterface{{IfaceID: "eth0", HostDevName: "bgtap5"}}}
	load, err := planLoad(p, spec, meta, &jail, [3]int{1, 16, 1})
	if err != nil {
		t.Fatal(err)
	}
	want := SnapshotLoad{SnapshotPath: "/restore.vmstate", MemBackend: MemoryBackend{"File", "/restore.mem"}, ResumeVM: true,
		NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "bgtap0"}}}
	if !reflect.DeepEqual(load, want) {
		t.Fatalf("jailed load %+v", load)
	}
	if p.drives[0].PathOnHost != "/rootfs.img" || p.vsock.UDSPath != "/vsock.sock" {
		t.Fatalf("in-jail names %+v %+v", p.drives, p.vsock)
	}
	wantLinks := []JailLink{
		{Src: disks[0], Name: "/rootfs.img", Disk: true}, {Src: disks[1], Name: "/disk1.img", Disk: true}, {Src: disks[2], Name: "/disk2.img", Disk: true},
		{Src: snap + "/fc-vmstate", Name: "/restore.vmstate"}, {Src: snap + "/fc-memory", Name: "/restore.mem", Shared: true},
	}
	if !reflect.DeepEqual(jail.Links, wantLinks) {
		t.Fatalf("links %+v", jail.Links)
	}
	// An unjailed snapshot does not go into a jail.
	meta.Jailed = false
	if _, err := planLoad(p, spec, meta, &jail, [3]int{1, 16, 1}); err == nil || !strings.Contains(err.Error(), "without the jailer and cannot be restored under") {
		t.Fatalf("unjailed snapshot into a jail: %v", err)
	}

	// The jail as the restore builds it: the shared memory is the
	// snapshot's inode, root's and read-only; the state a copy.
	os.WriteFile(filepath.Join(snap, FileSnapState), []byte("state"), 0o600)
	os.WriteFile(filepath.Join(snap, FileSnapMem), []byte("memory"), 0o600)
	if err := jail.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer jail.Remove()
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(snap, FileSnapMem), &a)
	syscall.Stat(jail.HostPath(jailRestoreMem), &b)
	if a.Ino != b.Ino || b.Mode&0o777 != 0o444 || b.Uid != uint32(os.Getuid()) {
		t.Errorf("shared memory in jail: ino %d/%d mode %o uid %d", a.Ino, b.Ino, b.Mode&0o777, b.Uid)
	}
	syscall.Stat(filepath.Join(snap, FileSnapState), &a)
	syscall.Stat(jail.HostPath(jailRestoreState), &b)
	if a.Ino == b.Ino || b.Mode&0o777 != 0o444 {
		t.Errorf("state in jail: shares the inode or mode %o", b.Mode&0o777)
	}

	// Save: what Firecracker wrote in the jail ends up in dst, the
	// daemon's and 0600, with the metadata.
	os.WriteFile(jail.HostPath(jailSaveState), []byte("saved state"), 0o644)
	os.WriteFile(jail.HostPath(jailSaveMem), make([]byte, 8192), 0o644)
	if os.Getuid() == 0 {
		os.Lchown(jail.HostPath(jailSaveState), jailUID(), jailUID())
		os.Lchown(jail.HostPath(jailSaveMem), jailUID(), jailUID())
	}
	dst := t.TempDir()
	saved, err := finishSave(context.Background(), State{Jail: &jail}, dst, snapshotMeta{Format: metaFormat, MemoryMiB: 512, VCPUs: 2, Jailed: true, Drives: p.drives})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{jailSaveState, jailSaveMem} {
		if _, err := os.Stat(jail.HostPath(n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left in the jail", n)
		}
	}
	for _, f := range []string{FileSnapState, FileSnapMem, FileSnapMeta} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dst, f), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != uint32(os.Getuid()) || st.Mode&0o777 != 0o600 {
			t.Errorf("%s: uid %d mode %o", f, st.Uid, st.Mode&0o777)
		}
	}
	if m, err := readMeta(dst); err != nil || m.State.Size != int64(len("saved state")) || m.Memory.Size != 8192 {
		t.Fatalf("meta %+v %v", m, err)
	}
	if saved.Bytes <= 0 {
		t.Errorf("saved %+v", saved)
	}
}

// A failed snapshot create still ends the VMM (its state is unknown)
// and surfaces Firecracker's fault.
func TestSaveFailureEndsVMM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := &Driver{Binary: fakeBinary(t)}
	dir := shortDir(t)
	os.WriteFile(filepath.Join(dir, "fake-create-fails"), nil, 0o600)
	proc, err := d.Start(ctx, testSpec(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(context.Background(), dir, proc, true, 0) })
	_, err = d.Save(ctx, dir, proc, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "save snapshot: firecracker PUT /snapshot/create: 400: Cannot create snapshot: No space left") {
		t.Fatalf("save: %v", err)
	}
	if d.Alive(proc) {
		t.Fatal("firecracker runs on after a failed save")
	}
}

// A VM whose drives were opened at other paths than banger's fixed names
// is refused before it is paused: its snapshot could not be restored.
func TestRestorable(t *testing.T) {
	ok := []Drive{{DriveID: "rootfs", PathOnHost: "fc-rootfs.img"}, {DriveID: "disk1", PathOnHost: "fc-disk1.img"}}
	if err := restorable(ok, false); err != nil {
		t.Fatal(err)
	}
	if err := restorable([]Drive{{DriveID: "rootfs", PathOnHost: "/rootfs.img"}}, true); err != nil {
		t.Fatal(err)
	}
	legacy := []Drive{{DriveID: "rootfs", PathOnHost: "/var/lib/banger/vms/v1/root.ext4"}}
	if err := restorable(legacy, false); err == nil || !strings.Contains(err.Error(), "restart the VM") {
		t.Fatalf("legacy paths: %v", err)
	}
}

func TestSaveNotRunning(t *testing.T) {
	d := &Driver{}
	if _, err := d.Save(context.Background(), shortDir(t), vmm.Process{PID: 0}, t.TempDir()); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("save of nothing: %v", err)
	}
}

func TestOverlayDisk(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	layer := filepath.Join(dir, "root.layer")
	os.WriteFile(layer, []byte("layer content"), 0o444)
	d := &Driver{}
	path := filepath.Join(dir, "root.ext4")
	got, err := d.OverlayDisk(ctx, nil, vmm.Disk{Path: layer, Format: "raw", ReadOnly: true}, path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, vmm.Disk{Path: path, Format: "raw"}) {
		t.Fatalf("disk %+v", got)
	}
	data, _ := os.ReadFile(path)
	fi, _ := os.Stat(path)
	if string(data) != "layer content" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("copy %q mode %o", data, fi.Mode().Perm())
	}
	if _, err := d.OverlayDisk(ctx, nil, vmm.Disk{Path: layer, Format: "raw", Backing: []vmm.Layer{{Path: "/img/rootfs.ext4", Format: "raw"}}}, filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "backing chain of 1") {
		t.Fatalf("chained layer: %v", err)
	}
	if _, err := d.OverlayDisk(ctx, nil, vmm.Disk{Path: layer, Format: "qcow2"}, filepath.Join(dir, "y")); err == nil || !strings.Contains(err.Error(), "raw disks only") {
		t.Fatalf("qcow2 layer: %v", err)
	}
}

func TestSnapshotCompat(t *testing.T) {
	d := &Driver{Binary: fakeBinary(t)}
	got, err := d.SnapshotCompat(context.Background(), "kvm")
	if err != nil {
		t.Fatal(err)
	}
	if want := "firecracker " + strings.TrimPrefix(strings.TrimSpace(swaggerVersion), "v") + "; cpu "; !strings.HasPrefix(got, want) || len(got) == len(want) {
		t.Fatalf("compat %q, want %q<model>", got, want)
	}
	info := "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: other\n"
	if m := cpuModel(info); m != "Intel(R) Xeon(R) CPU @ 2.20GHz" {
		t.Fatalf("model %q", m)
	}
	if m := cpuModel("processor : 0\n"); m != "unknown" {
		t.Fatalf("no model: %q", m)
	}
}

// The jailer's path mapping end to end, with a fake jailer that really
// chroots and drops to the jail's user (so a path outside the jail, or a
// file the jail's user cannot read, fails as it would under the real
// one): Save has Firecracker write in its jail and moves the files out;
// a restore into another VM's jail links them in under in-jail names
// and its drives and vsock socket resolve to that jail's own.
func TestJailedSaveAndRestore(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the fake jailer chroots: needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	jb := filepath.Join(t.TempDir(), "jailer")
	if err := os.Symlink(exe, jb); err != nil {
		t.Fatal(err)
	}
	base := shortDir(t)
	var tapOwners []string
	d := &Driver{
		Binary: fakeBinary(t),
		Jailer: JailerConfig{Binary: jb, ChrootBase: base, UID: 3000001, GID: 3000001},
		setTapOwner: func(name string, uid, gid int) error {
			tapOwners = append(tapOwners, name+" "+strconv.Itoa(uid))
			return nil
		},
	}
	srcDir := shortDir(t)
	spec := testSpec(t, srcDir)
	spec.Jailer = true
	proc, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("jailed boot: %v", err)
	}
	t.Cleanup(func() {
		d.Stop(context.Background(), srcDir, proc, true, 0)
		d.Remove(context.Background(), srcDir, proc)
	})
	st, err := DecodeState(srcDir, proc.State)
	if err != nil || st.Jail == nil {
		t.Fatalf("state %+v %v", st, err)
	}
	snapDir := filepath.Join(shortDir(t), "snap")
	os.Mkdir(snapDir, 0o700)
	if _, err := d.Save(ctx, srcDir, proc, snapDir); err != nil {
		t.Fatalf("jailed save: %v", err)
	}
	calls := readCalls(t, st.Jail.Root)
	if c := findCall(t, calls, "PUT /snapshot/create"); c.body != `{"snapshot_type":"Full","snapshot_path":"/save.vmstate","mem_file_path":"/save.mem"}` || c.status != 204 {
		t.Errorf("create: %+v", c)
	}
	for _, f := range []string{FileSnapState, FileSnapMem, FileSnapMeta} {
		var fst syscall.Stat_t
		if err := syscall.Stat(filepath.Join(snapDir, f), &fst); err != nil || fst.Uid != 0 || fst.Mode&0o777 != 0o600 {
			t.Errorf("%s: uid %d mode %o %v", f, fst.Uid, fst.Mode&0o777, err)
		}
	}
	meta, err := readSnapshot(snapDir)
	if err != nil || !meta.Jailed || meta.Drives[0].PathOnHost != "/rootfs.img" || meta.VsockUDS != "/vsock.sock" {
		t.Fatalf("meta %+v %v", meta, err)
	}

	spec2 := restoreSpec(t, snapDir, true)
	spec2.ID, spec2.Jailer = "efgh5678", true
	proc2, err := d.Start(ctx, spec2)
	if err != nil {
		t.Fatalf("jailed restore: %v", err)
	}
	t.Cleanup(func() {
		d.Stop(context.Background(), spec2.Dir, proc2, true, 0)
		d.Remove(context.Background(), spec2.Dir, proc2)
	})
	st2, _ := DecodeState(spec2.Dir, proc2.State)
	calls2 := readCalls(t, st2.Jail.Root)
	if want := []string{"GET /", "PUT /logger", "PUT /metrics", "PUT /snapshot/load"}; !reflect.DeepEqual(callNames(calls2), want) {
		t.Fatalf("restore calls %q", callNames(calls2))
	}
	wantLoad := `{"snapshot_path":"/restore.vmstate","mem_backend":{"backend_type":"File","backend_path":"/restore.mem"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"bgtap1"}]}`
	if c := calls2[3]; c.body != wantLoad || c.status != 204 {
		t.Errorf("load: %+v\nwant %s", c, wantLoad)
	}
	if s, err := Status(ctx, spec2.Dir, proc2); err != nil || s != "Running" {
		t.Fatalf("status %q %v", s, err)
	}
	// The restored guest's vsock socket is in its own jail, reached
	// through the VM directory's link.
	if _, err := os.Stat(st2.Jail.HostPath(jailVsock)); err != nil {
		t.Fatalf("vsock socket not in the new jail: %v", err)
	}
	c, err := agentclient.WaitReady(ctx, func(ctx context.Context) (net.Conn, error) { return d.DialAgent(ctx, spec2.Dir) }, 3*time.Second)
	if err != nil {
		t.Fatalf("agent of the restored jailed VM: %v", err)
	}
	c.Close()
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(snapDir, FileSnapMem), &a)
	syscall.Stat(st2.Jail.HostPath(jailRestoreMem), &b)
	if a.Ino != b.Ino {
		t.Error("shared memory is not the snapshot's file")
	}
	if want := []string{"bgtap0 3000001", "bgtap1 3000001"}; !reflect.DeepEqual(tapOwners, want) {
		t.Errorf("tap owners %q", tapOwners)
	}
}

// A restored VM can itself be saved (park after wake, fork of a fork);
// the new snapshot goes to its own directory and the one the VM maps
// its memory from is left as it was.
func TestSaveRestoredVM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := &Driver{Binary: fakeBinary(t)}
	_, snapDir, _ := bootForSnapshot(t, d)
	before, err := readSnapshot(snapDir)
	if err != nil {
		t.Fatal(err)
	}
	spec := restoreSpec(t, snapDir, true)
	proc, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(context.Background(), spec.Dir, proc, true, 0) })
	snap2 := filepath.Join(shortDir(t), "snap2")
	os.Mkdir(snap2, 0o700)
	if _, err := d.Save(ctx, spec.Dir, proc, snap2); err != nil {
		t.Fatalf("save of a restored VM: %v", err)
	}
	meta, err := readSnapshot(snap2)
	if err != nil || meta.Network[0].HostDevName != "bgtap1" {
		t.Fatalf("second snapshot %+v %v", meta, err)
	}
	if after, err := readSnapshot(snapDir); err != nil || !reflect.DeepEqual(after, before) {
		t.Fatalf("first snapshot changed: %v", err)
	}
}
