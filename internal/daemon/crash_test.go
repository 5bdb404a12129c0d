package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// TestHelperFakeVMM is not a test: run by fakeVMM, it is a process whose
// command line carries a VMM's name (as QEMU's `-name X,process=X` does)
// and that lives until killed.
func TestHelperFakeVMM(t *testing.T) {
	if os.Getenv("BANGER_TEST_FAKE_VMM") == "" {
		t.Skip("helper process only")
	}
	time.Sleep(time.Hour)
}

// fakeVMM starts a detached process named like the VMM of vmID in the
// instance with prefix, the way the QEMU driver names it.
func fakeVMM(t *testing.T, prefix, vmID string) *exec.Cmd {
	t.Helper()
	name := prefix + "-" + vmID
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFakeVMM$", "--", "-name", name+",process="+name)
	cmd.Env = append(os.Environ(), "BANGER_TEST_FAKE_VMM=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Reaped here, so a killed one does not linger as a zombie.
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return cmd
}

func alive(cmd *exec.Cmd) bool {
	st, err := system.ProcStartTime(cmd.Process.Pid)
	return err == nil && system.ProcAlive(cmd.Process.Pid, st)
}

// untilReconcile gives d what New sets up before it reconciles: a logger
// writing to log, drivers, operations, the agent cache and VM locks.
func untilReconcile(ctx context.Context, d *Daemon, log *syncBuffer) {
	d.log = slog.New(slog.NewTextHandler(log, nil))
	d.drivers = newDrivers(d.cfg)
	d.ops = newOps(opsDeps{store: d.store, log: d.log, base: ctx})
	d.agents = map[string]*agentclient.Client{}
	d.vmLocks = map[string]*vmLock{}
}

// crashDaemon is a daemon over a fresh instance directory, as New leaves
// it before reconcile.
func crashDaemon(t *testing.T, ctx context.Context, log *syncBuffer) *Daemon {
	t.Helper()
	d := testDaemon(t, nil)
	untilReconcile(ctx, d, log)
	d.layout = paths.Resolve(func(k string) string {
		if k == paths.EnvHome {
			return t.TempDir()
		}
		return ""
	}, os.Getuid())
	if err := paths.EnsureDirs(d.layout); err != nil {
		t.Fatal(err)
	}
	var err error
	if d.net, err = d.newNetwork(network.NewFake()); err != nil {
		t.Fatal(err)
	}
	return d
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// A daemon killed between starting a VMM and recording its PID leaves a
// `creating` row with PID 0; one killed during a derive or a verify leaves
// a VMM with no row at all. The next daemon stops every VMM of its own
// instance that no live row owns (and none of another instance's), and
// removes every directory and temporary file nothing owns.
func TestReconcileSweepsOrphans(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log syncBuffer
	d := crashDaemon(t, ctx, &log)
	l := d.layout
	prefix := l.InstancePrefix()

	img := store.Image{ID: "img1", Name: "base", Dir: l.ImageDir("img1"), State: store.ImageStateManaged}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	mkdirs(t, img.Dir)
	newVM := func(id, name, state string) store.VM {
		vm := store.VM{ID: id, Name: name, ImageID: img.ID, State: state, Dir: l.VMDir(id), VMM: config.VMMQEMU,
			CPUs: 1, MemoryMiB: 128, Egress: "none", CreatedAt: time.Now()}
		if err := d.store.CreateVM(ctx, &vm); err != nil {
			t.Fatal(err)
		}
		mkdirs(t, vm.Dir)
		return vm
	}
	// Killed between Start and the PID record: the row says creating, PID 0.
	crashed := newVM("c0ffee01", "crashed", api.VMCreating)
	crashedVMM := fakeVMM(t, prefix, crashed.ID)
	// Killed during a derive (provisioning VM) and a verify: no row.
	mkdirs(t, l.VMDir("p0a0b0c"), l.VMDir("v0d0e0f"))
	provisionVMM := fakeVMM(t, prefix, "p0a0b0c")
	verifyVMM := fakeVMM(t, prefix, "v0d0e0f")
	// A running VM the previous daemon recorded: re-adopted, untouched.
	running := newVM("beef0002", "running", api.VMRunning)
	runningVMM := fakeVMM(t, prefix, running.ID)
	running.PID = runningVMM.Process.Pid
	running.PIDStartTime, _ = system.ProcStartTime(running.PID)
	if err := d.store.UpdateVM(ctx, &running); err != nil {
		t.Fatal(err)
	}
	// A second VMM claiming the running VM's id is not the recorded one.
	strayVMM := fakeVMM(t, prefix, running.ID)
	// A stopped VM keeps its directory.
	stopped := newVM("dead0003", "stopped", api.VMStopped)
	// Another instance's VMM, whose id means nothing here.
	other := "bg000000"
	if other == prefix {
		other = "bg000001"
	}
	otherVMM := fakeVMM(t, other, "c0ffee01")

	// Directories and files nothing owns.
	mkdirs(t, l.VMDir("f00d0004"), filepath.Join(l.CacheDir, "build-1234abcd", "rootfs"), filepath.Join(l.ImagesDir, "half0005"))
	for _, f := range []string{"workspace-123.bundle", "pull-456.bundle"} {
		if err := os.WriteFile(filepath.Join(l.CacheDir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(l.CacheDir, fileAccelCache), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := d.reconcile(ctx); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for _, c := range []*exec.Cmd{crashedVMM, provisionVMM, verifyVMM, strayVMM} {
		for alive(c) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(c) {
			t.Errorf("orphaned VMM %v (pid %d) still runs", c.Args[len(c.Args)-1], c.Process.Pid)
		}
	}
	if !alive(runningVMM) {
		t.Error("the recorded VMM of a running VM was stopped")
	}
	if !alive(otherVMM) {
		t.Error("another instance's VMM was stopped")
	}
	for _, gone := range []string{crashed.Dir, l.VMDir("p0a0b0c"), l.VMDir("v0d0e0f"), l.VMDir("f00d0004"),
		filepath.Join(l.CacheDir, "build-1234abcd"), filepath.Join(l.ImagesDir, "half0005"),
		filepath.Join(l.CacheDir, "workspace-123.bundle"), filepath.Join(l.CacheDir, "pull-456.bundle")} {
		if _, err := os.Lstat(gone); err == nil {
			t.Errorf("%s was left behind", gone)
		}
	}
	for _, kept := range []string{running.Dir, stopped.Dir, img.Dir, filepath.Join(l.CacheDir, fileAccelCache)} {
		if _, err := os.Lstat(kept); err != nil {
			t.Errorf("%s was removed: %v", kept, err)
		}
	}
	if _, err := d.store.GetVM(ctx, "crashed"); err == nil {
		t.Error("the interrupted create's row is still there")
	}
	out := log.String()
	for _, want := range []string{"swept leftovers", "vmm_processes=4", "vm_dirs=3", "build_dirs=1", "image_dirs=1", "temp_files=2", "p0a0b0c"} {
		if !strings.Contains(out, want) {
			t.Errorf("daemon log lacks %q:\n%s", want, out)
		}
	}
}

func newTestDaemon(t *testing.T, ctx context.Context, home string) (*Daemon, error) {
	layout := paths.Resolve(func(k string) string {
		if k == paths.EnvHome {
			return home
		}
		return ""
	}, os.Getuid())
	return New(ctx, Options{Layout: layout, Config: config.Default(), Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil)), NetHost: network.NewFake()})
}

// Two daemons on one state directory would both reconcile, and each would
// take the other's VMs for orphans: the second refuses to start.
func TestSecondDaemonRefused(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	d1, err := newTestDaemon(t, ctx, home)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := newTestDaemon(t, ctx, home)
	if err == nil {
		d2.Close()
		d1.Close()
		t.Fatal("a second daemon opened the same state directory")
	}
	want := fmt.Sprintf("another banger daemon (pid %d) owns %s", os.Getpid(), home)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	// Its lock goes with it.
	d3, err := newTestDaemon(t, ctx, home)
	if err != nil {
		t.Fatalf("daemon after the first closed: %v", err)
	}
	d3.Close()
}

// Serve removes a stale socket of its own, never something else at the
// socket path: a file, a link, or a socket of another user.
func TestServeLeavesForeignSocket(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	home := t.TempDir()
	d, err := newTestDaemon(t, ctx, home)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sock := d.layout.Socket

	deadSocket := func(uid int) {
		t.Helper()
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		if uid != os.Getuid() {
			if err := os.Lchown(sock, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := map[string]func(){
		"regular file": func() { os.WriteFile(sock, []byte("mine"), 0o600) },
		"symlink":      func() { os.Symlink(filepath.Join(home, "elsewhere"), sock) },
	}
	if os.Getuid() == 0 {
		cases["socket of uid 4242"] = func() { deadSocket(4242) }
	}
	for name, make := range cases {
		os.Remove(sock)
		make()
		before, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		// On refusal Serve returns at once; the old code served until ctx ended.
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		err = d.Serve(rctx)
		rcancel()
		if err == nil || !strings.Contains(err.Error(), sock) {
			t.Errorf("%s: Serve did not refuse with the path: %v", name, err)
		}
		after, err := os.Lstat(sock)
		if err != nil || !os.SameFile(before, after) {
			t.Errorf("%s: Serve removed or replaced it (%v)", name, err)
		}
	}

	// A dead socket of our own is the previous daemon's: replaced.
	os.Remove(sock)
	deadSocket(os.Getuid())
	sctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- d.Serve(sctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Serve did not replace its own stale socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("Serve left its socket at exit")
	}
}

func TestVMMIDFromArgs(t *testing.T) {
	const prefix, vms = "bg123456", "/d/vms"
	tests := []struct {
		args []string
		id   string
	}{
		{[]string{"qemu-system-x86_64", "-name", "bg123456-ab12cd34,process=bg123456-ab12cd34"}, "ab12cd34"},
		{[]string{"qemu-system-x86_64", "-name", "bg123456-p0a0b0c,process=bg123456-p0a0b0c", "-daemonize"}, "p0a0b0c"},
		{[]string{"firecracker", "--api-sock", "/d/vms/ab12cd34/fc.sock", "--id", "ab12cd34"}, "ab12cd34"},
		// Another instance: a longer prefix that starts with ours, another one, another directory.
		{[]string{"qemu-system-x86_64", "-name", "bg1234567-ab12cd34,process=bg1234567-ab12cd34"}, ""},
		{[]string{"qemu-system-x86_64", "-name", "bg654321-ab12cd34,process=bg654321-ab12cd34"}, ""},
		{[]string{"firecracker", "--api-sock", "/d/vms2/ab12cd34/fc.sock"}, ""},
		// The name somewhere else on a command line (a shell, an editor) is not a VMM.
		{[]string{"less", "bg123456-ab12cd34"}, ""},
		{[]string{"qemu-system-x86_64", "-name", "bg123456-,process=bg123456-"}, ""},
		{[]string{"firecracker", "--api-sock", "/d/vms/../x/fc.sock"}, ""},
	}
	for _, tt := range tests {
		id, ok := vmmIDFromArgs(tt.args, prefix, vms)
		if id != tt.id || ok != (tt.id != "") {
			t.Errorf("%q: got %q %v, want %q", tt.args, id, ok, tt.id)
		}
	}
}

// The same state directory reached through another path (a symlinked
// BANGER_HOME): the rows name the path they were written with, the layout
// the other one. The sweep matches entries to rows by id, so the live
// VM's directory (its work disk) and the image's stay; a directory no row
// owns still goes.
func TestReconcileSweepStateDirAlias(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log syncBuffer
	d := crashDaemon(t, ctx, &log)
	l := d.layout
	alias := filepath.Join(t.TempDir(), "alias")
	if err := os.Symlink(l.DataDir, alias); err != nil {
		t.Fatal(err)
	}
	img := store.Image{ID: "img1", Name: "base", Dir: filepath.Join(alias, paths.DirImages, "img1"), State: store.ImageStateManaged}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	mkdirs(t, img.Dir)
	vm := store.VM{ID: "beef0002", Name: "stopped", ImageID: img.ID, State: api.VMStopped, Dir: filepath.Join(alias, paths.DirVMs, "beef0002"),
		VMM: config.VMMQEMU, CPUs: 1, MemoryMiB: 128, Egress: "none", CreatedAt: time.Now()}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	mkdirs(t, vm.Dir, l.VMDir("f00d0004"))
	if err := os.WriteFile(filepath.Join(vm.Dir, paths.FileWorkDisk), []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(l.VMDir(vm.ID), paths.FileWorkDisk), l.ImageDir(img.ID)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("owned %s removed by the sweep: %v", p, err)
		}
	}
	if _, err := os.Lstat(l.VMDir("f00d0004")); err == nil {
		t.Error("a directory no row owns was left behind")
	}
}

// Rows whose directories are somewhere else altogether (a state database
// copied into a new state directory): the sweep cannot tell what is whose,
// so it removes nothing and says so.
func TestReconcileSweepSkipsForeignRows(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log syncBuffer
	d := crashDaemon(t, ctx, &log)
	l := d.layout
	elsewhere := t.TempDir()
	img := store.Image{ID: "img1", Name: "base", Dir: l.ImageDir("img1"), State: store.ImageStateManaged}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{ID: "beef0002", Name: "moved", ImageID: img.ID, State: api.VMStopped, Dir: filepath.Join(elsewhere, "beef0002"),
		VMM: config.VMMQEMU, CPUs: 1, MemoryMiB: 128, Egress: "none", CreatedAt: time.Now()}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	mkdirs(t, l.VMDir("f00d0004"))
	if err := d.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.VMDir("f00d0004")); err != nil {
		t.Errorf("sweep removed a directory although the rows live elsewhere: %v", err)
	}
	if out := log.String(); !strings.Contains(out, "leftover sweep skipped") {
		t.Errorf("daemon log does not say the sweep was skipped:\n%s", out)
	}
}
