package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// shortDir is a temp dir whose socket paths fit in sun_path (t.TempDir
// names can be too long).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serveFake runs f on a Unix socket and returns a client of it.
func serveFake(t *testing.T, f *fakeFC) *Client {
	t.Helper()
	sock := filepath.Join(shortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock)
}

// testSpec is a spec whose files exist (kernel with the ELF magic).
func testSpec(t *testing.T, dir string) vmm.Spec {
	t.Helper()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("\x7fELF\x02\x01\x01"), 0o644); err != nil {
		t.Fatal(err)
	}
	var disks []vmm.Disk
	for i, n := range []string{"root.ext4", "seed.ext4", "work.ext4"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, vmm.Disk{Path: p, Format: "raw", ReadOnly: i == 1})
	}
	return vmm.Spec{
		ID: "abcd1234", ProcessName: "banger-test-abcd1234", Dir: dir,
		Kernel: kernel, Cmdline: "console=ttyS0 root=LABEL=bangerroot rw nomodule",
		Disks: disks, CPUs: 2, MemoryMiB: 512,
		Net: vmm.Net{Mode: vmm.NetTap, TapDevice: "bgtap0", MAC: "06:00:ac:10:00:02"},
	}
}

func TestConfigureSequence(t *testing.T) {
	dir := shortDir(t)
	f := newFake()
	f.cwd = dir
	c := serveFake(t, f)
	spec := testSpec(t, dir)
	p, err := planStart(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{p.logger.LogPath, p.metrics.MetricsPath} {
		os.WriteFile(file, nil, 0o600)
	}
	for name, target := range p.driveLinks {
		os.Symlink(target, filepath.Join(dir, name))
	}
	if err := p.configure(context.Background(), c); err != nil {
		t.Fatalf("configure: %v", err)
	}
	want := []string{
		"PUT /machine-config", "PUT /boot-source",
		"PUT /drives/rootfs", "PUT /drives/disk1", "PUT /drives/disk2",
		"PUT /network-interfaces/eth0", "PUT /vsock", "PUT /logger", "PUT /metrics",
		"PUT /actions",
	}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("calls:\n got %q\nwant %q", f.calls, want)
	}
	// Pre-boot configuration after InstanceStart is refused, and the
	// fault message reaches the caller.
	err = c.PutDrive(context.Background(), Drive{DriveID: "late", PathOnHost: "/x", IsRootDevice: false})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.FaultMessage, "not supported after starting") {
		t.Fatalf("late drive: %v", err)
	}
	if !strings.Contains(err.Error(), "PUT /drives/late: 400: The requested operation is not supported after starting the microVM.") {
		t.Fatalf("error text: %v", err)
	}
	info, err := c.Describe(context.Background())
	if err != nil || info.State != "Running" {
		t.Fatalf("describe: %+v %v", info, err)
	}
}

func TestConfigureFaultSurfaces(t *testing.T) {
	dir := shortDir(t)
	f := newFake()
	f.faults["/boot-source"] = "The kernel file cannot be opened: No such file or directory (os error 2)"
	c := serveFake(t, f)
	p, err := planStart(testSpec(t, dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = p.configure(context.Background(), c)
	if err == nil || !IsAPIError(err) {
		t.Fatalf("want an API error, got %v", err)
	}
	if want := "boot source: firecracker PUT /boot-source: 400: The kernel file cannot be opened: No such file or directory (os error 2)"; err.Error() != want {
		t.Fatalf("got %q\nwant %q", err, want)
	}
	// It stopped at the failing step.
	if got := f.calls[len(f.calls)-1]; got != "PUT /boot-source" {
		t.Fatalf("last call %q", got)
	}
}

func TestInstanceStartNeedsBootSourceAndRoot(t *testing.T) {
	ctx := context.Background()
	c := serveFake(t, newFake())
	err := c.Action(ctx, ActionInstanceStart)
	if err == nil || !strings.Contains(err.Error(), "without kernel configuration") {
		t.Fatalf("start without boot source: %v", err)
	}
	kernel := filepath.Join(shortDir(t), "vmlinux")
	os.WriteFile(kernel, []byte("\x7fELF"), 0o644)
	if err := c.PutBootSource(ctx, BootSource{KernelImagePath: kernel}); err != nil {
		t.Fatal(err)
	}
	if err := c.Action(ctx, ActionInstanceStart); err == nil || !strings.Contains(err.Error(), "root drive") {
		t.Fatalf("start without root drive: %v", err)
	}
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 33, MemSizeMiB: 128}); err == nil {
		t.Fatal("33 vCPUs accepted")
	}
	if err := c.Action(ctx, "Reboot"); err == nil || !strings.Contains(err.Error(), "not one of the allowed values") {
		t.Fatalf("unknown action: %v", err)
	}
}

func TestPauseResumeSnapshot(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)
	f := newFake()
	f.started, f.boot, f.rootDisk = true, true, true
	f.machine = map[string]any{"vcpu_count": 1.0, "mem_size_mib": 16.0}
	disk := filepath.Join(dir, "root.ext4")
	os.WriteFile(disk, nil, 0o600)
	f.drives = []map[string]any{{"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}}
	f.nics = []map[string]any{{"iface_id": "eth0", "host_dev_name": "bgtap0"}}
	c := serveFake(t, f)
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	err := c.CreateSnapshot(ctx, SnapshotCreate{SnapshotPath: snap, MemFilePath: mem})
	if err == nil || !strings.Contains(err.Error(), "not paused") {
		t.Fatalf("snapshot of a running VM: %v", err)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Describe(ctx); info.State != "Paused" {
		t.Fatalf("state %q after pause", info.State)
	}
	if err := c.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: SnapshotFull, SnapshotPath: snap, MemFilePath: mem}); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Describe(ctx); info.State != "Running" {
		t.Fatalf("state %q after resume", info.State)
	}

	// Load goes to a fresh Firecracker, before any device is configured
	// (the logger and metrics excepted).
	cfg := newFake()
	c3 := serveFake(t, cfg)
	if err := c3.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: filepath.Join(dir, "v.sock")}); err != nil {
		t.Fatal(err)
	}
	if err := c3.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: snap, MemBackend: MemoryBackend{BackendType: "File", BackendPath: mem}}); err == nil || !strings.Contains(err.Error(), "not allowed after configuring") {
		t.Fatalf("load after configuring a device: %v", err)
	}
	fresh := newFake()
	c2 := serveFake(t, fresh)
	if err := c2.PutLogger(ctx, Logger{Level: "Info"}); err != nil {
		t.Fatal(err)
	}
	err = c2.LoadSnapshot(ctx, SnapshotLoad{
		SnapshotPath: snap, MemBackend: MemoryBackend{BackendType: "File", BackendPath: mem},
		ResumeVM: true, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "bgtap9"}},
		VsockOverride: &VsockOverride{UDSPath: filepath.Join(dir, "v.sock")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := c2.Describe(ctx); info.State != "Running" {
		t.Fatalf("state %q after load with resume", info.State)
	}
	got, err := c2.VMConfig(ctx)
	if err != nil || len(got.NetworkInterfaces) != 1 || got.NetworkInterfaces[0].HostDevName != "bgtap9" || got.Drives[0].PathOnHost != disk {
		t.Fatalf("restored config %+v %v", got, err)
	}
	if err := c2.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: snap, MemBackend: MemoryBackend{BackendType: "File", BackendPath: mem}}); err == nil {
		t.Fatal("second load accepted")
	}
	// A snapshot whose disk is gone cannot be loaded.
	os.Remove(disk)
	err = serveFake(t, newFake()).LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: snap, MemBackend: MemoryBackend{BackendType: "File", BackendPath: mem}})
	if err == nil || !strings.Contains(err.Error(), "Failed to restore block device") {
		t.Fatalf("load without the disk: %v", err)
	}
}

func TestRequestBodies(t *testing.T) {
	// The exact JSON each documented body gets: unset optionals are absent.
	cases := []struct {
		v    any
		want string
	}{
		{MachineConfig{VCPUCount: 2, MemSizeMiB: 512}, `{"vcpu_count":2,"mem_size_mib":512}`},
		{BootSource{KernelImagePath: "/k"}, `{"kernel_image_path":"/k"}`},
		{Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true}, `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false}`},
		{NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}, `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{Vsock{GuestCID: 3, UDSPath: "/v"}, `{"guest_cid":3,"uds_path":"/v"}`},
		{SnapshotCreate{SnapshotPath: "/s", MemFilePath: "/m"}, `{"snapshot_path":"/s","mem_file_path":"/m"}`},
		{SnapshotLoad{SnapshotPath: "/s", MemBackend: MemoryBackend{"File", "/m"}}, `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}`},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.v)
		if err != nil || string(b) != c.want {
			t.Errorf("%T: got %s, want %s (%v)", c.v, b, c.want, err)
		}
	}
}

func TestParseFault(t *testing.T) {
	cases := map[string]string{
		`{"fault_message": "Invalid kernel path"}`: "Invalid kernel path",
		`{"fault_message": ""}`:                    "",
		"  plain text\n":                           "plain text",
		`{"other": 1}`:                             `{"other": 1}`,
		``:                                         "",
	}
	for in, want := range cases {
		if got := ParseFault([]byte(in)); got != want {
			t.Errorf("ParseFault(%q) = %q, want %q", in, got, want)
		}
	}
	if got := ParseFault([]byte(strings.Repeat("x", 2000))); len(got) > 600 {
		t.Errorf("long body not cut: %d bytes", len(got))
	}
}

func TestBootArgs(t *testing.T) {
	got := BootArgs("console=ttyS0 root=LABEL=r rw nomodule panic=-1")
	if want := "console=ttyS0 root=LABEL=r rw panic=-1 reboot=k pci=off"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := BootArgs("reboot=k pci=off"); got != "reboot=k pci=off" {
		t.Fatalf("duplicated: %q", got)
	}
}

func TestPlanStartRefuses(t *testing.T) {
	dir := shortDir(t)
	base := testSpec(t, dir)
	cases := []struct {
		name string
		mod  func(*vmm.Spec)
		want string
	}{
		{"user net", func(s *vmm.Spec) { s.Net = vmm.Net{Mode: vmm.NetUser} }, "needs --net tap"},
		{"empty net", func(s *vmm.Spec) { s.Net = vmm.Net{} }, "needs --net tap"},
		{"no tap", func(s *vmm.Spec) { s.Net.TapDevice = "" }, "without a TAP device"},
		{"qcow2", func(s *vmm.Spec) { s.Disks[0].Format = "qcow2" }, "raw disks only"},
		{"cpus", func(s *vmm.Spec) { s.CPUs = 33 }, "1 to 32 vCPUs"},
		{"no disks", func(s *vmm.Spec) { s.Disks = nil }, "no root disk"},
		{"long dir", func(s *vmm.Spec) { s.Dir = "/" + strings.Repeat("d", 100) }, "too long"},
	}
	for _, c := range cases {
		s := base
		s.Disks = append([]vmm.Disk(nil), base.Disks...)
		c.mod(&s)
		if _, err := planStart(s, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := planStart(base, nil); err != nil {
		t.Fatal(err)
	}
}

func TestPlanStartJailed(t *testing.T) {
	dir := shortDir(t)
	spec := testSpec(t, dir)
	spec.Initrd = filepath.Join(dir, "initrd.img")
	jail, err := PlanJail(JailerConfig{ChrootBase: "/srv/jailer", UID: 123, GID: 456}, "/usr/bin/firecracker", spec.ID, spec.Kernel, spec.Initrd, []string{spec.Disks[0].Path, spec.Disks[1].Path, spec.Disks[2].Path})
	if err != nil {
		t.Fatal(err)
	}
	p, err := planStart(spec, &jail)
	if err != nil {
		t.Fatal(err)
	}
	root := "/srv/jailer/firecracker/abcd1234/root"
	if p.boot.KernelImagePath != "/vmlinux" || p.boot.InitrdPath != "/initrd.img" {
		t.Errorf("boot source %+v", p.boot)
	}
	if p.drives[0].PathOnHost != "/rootfs.img" || p.drives[2].PathOnHost != "/disk2.img" || !p.drives[1].IsReadOnly {
		t.Errorf("drives %+v", p.drives)
	}
	if p.vsock.UDSPath != "/vsock.sock" || p.state.VsockUDS != root+"/vsock.sock" || p.state.APISocket != root+"/api.sock" {
		t.Errorf("vsock %+v state %+v", p.vsock, p.state)
	}
	if !reflect.DeepEqual(p.fcArgs, []string{"--api-sock", "/api.sock"}) {
		t.Errorf("fc args %q", p.fcArgs)
	}
	if strings.Contains(p.boot.BootArgs, "nomodule") {
		t.Errorf("nomodule in boot args: %q", p.boot.BootArgs)
	}
}

func TestJailerArgs(t *testing.T) {
	cfg := JailerConfig{UID: 900, GID: 901, ChrootBase: "/srv/bj", ParentCgroup: "banger", Cgroups: []string{"cpu.max=200000 100000", "memory.max=1073741824"}}
	got := JailerArgs(cfg, "/usr/local/bin/firecracker", "vm-1", []string{"--api-sock", "/api.sock"})
	want := []string{
		"--id", "vm-1", "--exec-file", "/usr/local/bin/firecracker",
		"--uid", "900", "--gid", "901", "--cgroup-version", "2",
		"--cgroup", "cpu.max=200000 100000", "--cgroup", "memory.max=1073741824",
		"--parent-cgroup", "banger", "--chroot-base-dir", "/srv/bj",
		"--", "--api-sock", "/api.sock",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	got = JailerArgs(JailerConfig{}, "/fc", "x", nil)
	want = []string{"--id", "x", "--exec-file", "/fc", "--uid", "0", "--gid", "0", "--cgroup-version", "2", "--chroot-base-dir", "/srv/jailer"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults: got %q", got)
	}
}

func TestPlanJail(t *testing.T) {
	cfg := JailerConfig{ChrootBase: "/srv/jailer", Cgroups: []string{"cpu.weight=50"}, UID: 3000001, GID: 3000001}
	p, err := PlanJail(cfg, "/opt/fc/firecracker-v1.12", "abc", "/img/vmlinux", "", []string{"/vm/root.ext4", "/vm/seed.ext4"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Dir != "/srv/jailer/firecracker-v1.12/abc" || p.Root != p.Dir+"/root" {
		t.Errorf("dirs %q %q", p.Dir, p.Root)
	}
	wantLinks := []JailLink{{Src: "/img/vmlinux", Name: "/vmlinux"}, {Src: "/vm/root.ext4", Name: "/rootfs.img", Disk: true}, {Src: "/vm/seed.ext4", Name: "/disk1.img", Disk: true}}
	if !reflect.DeepEqual(p.Links, wantLinks) {
		t.Errorf("links %+v", p.Links)
	}
	if p.CgroupDir != "/sys/fs/cgroup/firecracker-v1.12/abc" {
		t.Errorf("cgroup dir %q", p.CgroupDir)
	}
	for _, id := range []string{"", "a/b", "../x", strings.Repeat("a", 65), "a_b"} {
		if _, err := PlanJail(cfg, "/fc", id, "/k", "", nil); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
	if _, err := PlanJail(JailerConfig{ChrootBase: "rel", UID: 1, GID: 1}, "/fc", "a", "/k", "", nil); err == nil {
		t.Error("relative chroot base accepted")
	}
	// Root in the jail defeats the jail.
	if _, err := PlanJail(JailerConfig{ChrootBase: "/srv/jailer"}, "/fc", "a", "/k", "", nil); err == nil || !strings.Contains(err.Error(), "uid_range") {
		t.Errorf("uid 0 jail: %v", err)
	}
	if p.UID != 3000001 || p.GID != 3000001 {
		t.Errorf("plan uid/gid %d/%d", p.UID, p.GID)
	}
}

// jailUID is a uid the tests may hand files to: another user's when
// root (as the daemon is), else the test's own.
func jailUID() int {
	if os.Getuid() == 0 {
		return 3000001
	}
	return os.Getuid()
}

// The jail must never change the image's shared boot files: a hard link
// chowned to the jail's user would let a compromised Firecracker rewrite
// the kernel every VM of the image boots. The jail gets root-owned,
// read-only copies; only the VM's own disks are linked and handed over.
func TestJailKeepsImageFiles(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to hand files to another uid")
	}
	imgDir, vmDir, base := t.TempDir(), t.TempDir(), t.TempDir()
	kernel, initrd := filepath.Join(imgDir, "vmlinux"), filepath.Join(imgDir, "initrd.img")
	disk := filepath.Join(vmDir, "root.ext4")
	os.WriteFile(kernel, []byte("\x7fELF kernel"), 0o644)
	os.WriteFile(initrd, []byte("initrd"), 0o644)
	os.WriteFile(disk, []byte("disk"), 0o600)
	stat := func(p string) syscall.Stat_t {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	before := map[string]syscall.Stat_t{kernel: stat(kernel), initrd: stat(initrd)}
	var plans []JailPlan
	for i, uid := range []int{3000001, 3000002} {
		cfg := JailerConfig{ChrootBase: base, UID: uid, GID: uid}
		p, err := PlanJail(cfg, "/usr/bin/firecracker", fmt.Sprintf("vm%d", i), kernel, initrd, []string{disk})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Prepare(context.Background()); err != nil {
			t.Fatal(err)
		}
		plans = append(plans, p)
		for _, f := range []string{"/vmlinux", "/initrd.img"} {
			st := stat(p.HostPath(f))
			if st.Uid != 0 || st.Mode&0o777 != 0o444 {
				t.Errorf("%s in jail: uid %d mode %o, want root's 0444", f, st.Uid, st.Mode&0o777)
			}
		}
		if st := stat(p.HostPath("/rootfs.img")); st.Uid != uint32(uid) || st.Ino != stat(disk).Ino {
			t.Errorf("VM disk in jail: uid %d ino %d, want the VM's disk given to %d", st.Uid, st.Ino, uid)
		}
		if st := stat(p.Root); st.Uid != uint32(uid) {
			t.Errorf("jail root owned by %d, want %d", st.Uid, uid)
		}
	}
	for p, b := range before {
		a := stat(p)
		if a.Uid != b.Uid || a.Gid != b.Gid || a.Mode != b.Mode || a.Nlink != b.Nlink || a.Nlink != 1 {
			t.Errorf("image file %s changed: uid %d->%d mode %o->%o links %d->%d", filepath.Base(p), b.Uid, a.Uid, b.Mode, a.Mode, b.Nlink, a.Nlink)
		}
	}
	// Two VMs, two users: the jailer is told each VM's own.
	a := JailerArgs(JailerConfig{UID: plans[0].UID, GID: plans[0].GID}, "/fc", plans[0].ID, nil)
	b := JailerArgs(JailerConfig{UID: plans[1].UID, GID: plans[1].GID}, "/fc", plans[1].ID, nil)
	if a[5] != "3000001" || b[5] != "3000002" || a[7] != "3000001" || b[7] != "3000002" {
		t.Errorf("jailer args: %q / %q", a, b)
	}
	for _, p := range plans {
		p.Remove()
	}
}

func TestJailPrepareAndRemove(t *testing.T) {
	vmDir := t.TempDir()
	base := t.TempDir()
	kernel := filepath.Join(vmDir, "vmlinux")
	disk := filepath.Join(vmDir, "root.ext4")
	os.WriteFile(kernel, []byte("\x7fELF kernel"), 0o644)
	os.WriteFile(disk, []byte("disk"), 0o600)
	cfg := JailerConfig{ChrootBase: base, UID: jailUID(), GID: jailUID()}
	p, err := PlanJail(cfg, "/usr/bin/firecracker", "vm1", kernel, "", []string{disk})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Hard links: the jail's disk is the VM's disk.
	a, _ := os.Stat(disk)
	b, err := os.Stat(p.HostPath("/rootfs.img"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("root disk not hard-linked into the jail: %v", err)
	}
	for _, f := range []string{"/vmlinux", "/firecracker.log", "/firecracker.metrics"} {
		if _, err := os.Stat(p.HostPath(f)); err != nil {
			t.Errorf("%s missing in jail: %v", f, err)
		}
	}
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("jail left behind: %v", err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("VM disk removed with the jail: %v", err)
	}
}

// fakeBinary puts this test binary on a temp PATH as "firecracker".
func fakeBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "firecracker")
	if err := os.Symlink(exe, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestDriverLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := shortDir(t)
	spec := testSpec(t, dir)
	d := &Driver{Binary: fakeBinary(t)}
	proc, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { d.Stop(context.Background(), dir, proc, true, 0) })
	if !d.Alive(proc) || proc.StartTime == 0 {
		t.Fatalf("not alive after start: %+v", proc)
	}
	// A recycled PID with another start time is not our VMM.
	if d.Alive(vmm.Process{PID: proc.PID, StartTime: proc.StartTime + 1}) {
		t.Fatal("different start time counted as alive")
	}
	st, err := DecodeState(dir, proc.State)
	if err != nil {
		t.Fatal(err)
	}
	if st.APISocket != filepath.Join(dir, paths.FileFCSocket) || st.VsockUDS != filepath.Join(dir, paths.FileVsockSocket) || st.GuestCID != GuestCID {
		t.Fatalf("state %+v", st)
	}
	if s, err := Status(ctx, dir, proc); err != nil || s != "Running" {
		t.Fatalf("status %q %v", s, err)
	}
	// The guest agent answers through hybrid vsock, with the same host
	// protocol as over QEMU's virtio-serial port.
	c, err := agentclient.WaitReady(ctx, func(ctx context.Context) (net.Conn, error) { return d.DialAgent(ctx, dir) }, 3*time.Second)
	if err != nil {
		t.Fatalf("agent over vsock: %v", err)
	}
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	c.Close()
	if !strings.Contains(system.TailFile(filepath.Join(dir, paths.FileConsoleLog), 200), "fake guest: booting") {
		t.Error("guest console did not reach console.log")
	}
	// Polite stop: Ctrl+Alt+Del, and the VMM exits.
	start := time.Now()
	if err := d.Stop(ctx, dir, proc, false, 10*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if d.Alive(proc) {
		t.Fatal("alive after stop")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("polite stop took %s; the ctrl-alt-del path was not taken", time.Since(start))
	}
}

func TestDriverStopKillsAfterDeadline(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)
	os.WriteFile(filepath.Join(dir, "fake-ignore-cad"), nil, 0o600)
	d := &Driver{Binary: fakeBinary(t)}
	proc, err := d.Start(ctx, testSpec(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := d.Stop(ctx, dir, proc, false, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d.Alive(proc) {
		t.Fatal("still alive")
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("killed after %s, before the deadline", el)
	}
}

func TestDriverStartFailures(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)
	os.WriteFile(filepath.Join(dir, "fake-die"), nil, 0o600)
	d := &Driver{Binary: fakeBinary(t)}
	_, err := d.Start(ctx, testSpec(t, dir))
	if err == nil || !strings.Contains(err.Error(), "dying on request") {
		t.Fatalf("want the VMM's stderr in the error, got %v", err)
	}

	dir2 := shortDir(t)
	spec := testSpec(t, dir2)
	os.WriteFile(spec.Kernel, []byte("MZ bzImage"), 0o644)
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "not an ELF vmlinux") {
		t.Fatalf("bzImage accepted: %v", err)
	}
	spec = testSpec(t, dir2)
	spec.Net = vmm.Net{Mode: vmm.NetUser}
	if _, err := d.Start(ctx, spec); !errors.Is(err, ErrNeedsTap) {
		t.Fatalf("user net: %v", err)
	}
	if _, err := (&Driver{Binary: "/nonexistent/firecracker"}).Start(ctx, testSpec(t, dir2)); err == nil {
		t.Fatal("missing binary accepted")
	}
	// A fault during configuration kills the VMM it started.
	dir3 := shortDir(t)
	spec = testSpec(t, dir3)
	spec.Kernel = filepath.Join(dir3, "vmlinux")
	spec.Disks[0].Path = filepath.Join(dir3, "missing.ext4")
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "Unable to create the block device") {
		t.Fatalf("fault not surfaced: %v", err)
	}
}

// A jail on another filesystem than the VM's disks cannot hard-link
// them; copying would lose the guest's writes, so it is refused.
func TestJailPrepareRefusesDiskCopy(t *testing.T) {
	vmDir := t.TempDir()
	base, err := os.MkdirTemp("/dev/shm", "jail")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	defer os.RemoveAll(base)
	var a, b syscall.Stat_t
	syscall.Stat(vmDir, &a)
	syscall.Stat(base, &b)
	if a.Dev == b.Dev {
		t.Skip("/dev/shm and the temp dir are one filesystem here")
	}
	kernel := filepath.Join(vmDir, "vmlinux")
	disk := filepath.Join(vmDir, "root.ext4")
	os.WriteFile(kernel, []byte("\x7fELF"), 0o644)
	os.WriteFile(disk, []byte("disk"), 0o600)
	cfg := JailerConfig{ChrootBase: base, UID: jailUID(), GID: jailUID()}
	p, _ := PlanJail(cfg, "/usr/bin/firecracker", "vm2", kernel, "", []string{disk})
	err = p.Prepare(context.Background())
	if err == nil || !strings.Contains(err.Error(), "chroot_base") {
		t.Fatalf("disk copied across filesystems: %v", err)
	}
	// The kernel alone is copied fine.
	if _, err := os.Stat(p.HostPath("/vmlinux")); err != nil {
		t.Fatalf("kernel not copied: %v", err)
	}
}

// The fake is as strict as the swagger: this is what makes the sequence
// test above mean something.
func TestFakeRejectsOffSchemaBodies(t *testing.T) {
	ctx := context.Background()
	c := serveFake(t, newFake())
	cases := []struct {
		method, path string
		body         any
		want         string
	}{
		// From the vendored swagger (required, types, minimum, enum).
		{"PUT", "/vsock", map[string]any{"uds_path": "/v"}, `property "guest_cid" is missing`},
		{"PUT", "/vsock", map[string]any{"guest_cid": "3", "uds_path": "/v"}, "field `guest_cid`: value must be an integer"},
		{"PUT", "/vsock", map[string]any{"guest_cid": 2, "uds_path": "/v"}, "field `guest_cid`: number must be at least 3"},
		{"PATCH", "/vm", map[string]any{"state": "Stopped"}, "not one of the allowed values"},
		{"PUT", "/snapshot/create", map[string]any{"snapshot_type": "Incremental", "snapshot_path": "/s", "mem_file_path": "/m"}, "not one of the allowed values"},
		{"PUT", "/snapshot/create", map[string]any{"snapshot_path": "/s"}, `property "mem_file_path" is missing`},
		{"PUT", "/snapshot/load", map[string]any{"mem_backend": map[string]any{"backend_type": "File", "backend_path": "/m"}}, `property "snapshot_path" is missing`},
		{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "/s", "mem_backend": map[string]any{"backend_type": "Memory", "backend_path": "/m"}}, "not one of the allowed values"},
		{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "/s", "mem_backend": map[string]any{"backend_type": "File"}}, `property "backend_path" is missing`},
		{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "/s", "mem_backend": map[string]any{"backend_type": "File", "backend_path": "/m"}, "network_overrides": []any{map[string]any{"iface_id": "eth0"}}}, `property "host_dev_name" is missing`},
		{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "/s", "mem_backend": map[string]any{"backend_type": "File", "backend_path": "/m"}, "vsock_override": map[string]any{"path": "/v"}}, `property "path" is unsupported`},
		// From the swagger's property lists, closed by banger's rule
		// denyUnknownFields (Firecracker's serde refuses unknown fields).
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "memory": 1}, `property "memory" is unsupported`},
		{"PUT", "/vsock", map[string]any{"guest_cid": 3, "uds_path": "/v", "uds_pth": "/w"}, `property "uds_pth" is unsupported`},
		// Firecracker behaviour beyond the swagger.
		{"PUT", "/drives/a", map[string]any{"drive_id": "b", "is_root_device": true, "path_on_host": "/x"}, "does not match"},
		{"POST", "/actions", map[string]any{"action_type": "InstanceStart"}, "Invalid request method"},
		{"PUT", "/vm", map[string]any{"state": "Paused"}, "Invalid request method"},
		// Defined by the swagger but not served by the fake: refused, not
		// silently accepted.
		{"PUT", "/balloon", map[string]any{"amount_mib": 1, "deflate_on_oom": true}, "banger's fake does not implement"},
	}
	for _, tc := range cases {
		err := c.do(ctx, tc.method, tc.path, tc.body, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.FaultMessage, tc.want) {
			t.Errorf("%s %s %v: got %v, want fault %q", tc.method, tc.path, tc.body, err, tc.want)
		}
	}
}
