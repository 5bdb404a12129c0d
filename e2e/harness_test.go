// Package e2e is banger's end-to-end suite: the real CLI talks to a real
// daemon on a real socket, which boots real VMs under QEMU from a real
// image. It runs one VM at a time (these machines have 2 cores).
//
// Under CI (any non-empty CI variable: CI systems set CI=1, CI=true or
// similar) a test that cannot run fails with the reason; elsewhere it skips
// with the reason.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
)

var (
	repoRoot   string
	bangerBin  string
	cannotRun  string // why VM tests cannot run here, "" when they can
	sharedInst *instance
	sharedOnce sync.Once
	sharedErr  error
	// authHome is the shared daemon's auth.home: tests put fake agent
	// credentials there.
	authHome string
)

func TestMain(m *testing.M) {
	wd, _ := os.Getwd()
	repoRoot = filepath.Dir(wd)
	bangerBin = filepath.Join(repoRoot, "bin", "banger")
	cannotRun = checkHost()
	code := m.Run()
	if sharedInst != nil {
		sharedInst.shutdown()
	}
	shutdownBench()
	if summary := boots.summary(); summary != "" {
		fmt.Print(summary)
	}
	if summary, missed := targetSummary(); summary != "" {
		fmt.Print(summary)
		// A missed target is visible at a glance; it fails the run only
		// when asked to.
		if missed && os.Getenv("BENCH_STRICT") == "1" && code == 0 {
			code = 1
		}
	}
	if authHome != "" {
		os.RemoveAll(authHome)
	}
	os.Exit(code)
}

// checkHost says why VM tests cannot run on this machine.
func checkHost() string {
	if os.Geteuid() != 0 {
		return "the end-to-end suite needs root (image build bootstraps a rootfs)"
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4", "mmdebstrap", "lz4", "ssh", "tmux"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (run `make deps`)"
		}
	}
	for _, b := range []string{"banger", "banger-agent"} {
		if _, err := os.Stat(filepath.Join(repoRoot, "bin", b)); err != nil {
			return "bin/" + b + " is missing (run `make build`)"
		}
	}
	return ""
}

// underCI reports whether the suite runs under CI. Any non-empty CI counts:
// GitHub, GitLab and most others set CI=true, some set CI=1 or a name, and
// a skipped VM test there would hide that nothing booted.
func underCI() bool { return os.Getenv("CI") != "" }

// requireVM fails under CI and skips elsewhere when VMs cannot run.
func requireVM(t testing.TB) {
	t.Helper()
	if cannotRun == "" {
		return
	}
	if underCI() {
		t.Fatalf("end-to-end test cannot run: %s", cannotRun)
	}
	t.Skipf("end-to-end test cannot run: %s", cannotRun)
}

// instance is one private banger: its own BANGER_HOME, daemon and socket.
type instance struct {
	t      testing.TB
	home   string
	daemon *exec.Cmd
	logf   *os.File
	waitc  chan error
	// wrap prefixes the daemon's command line (e.g. `ip netns exec NS`),
	// so the daemon and the VMMs it starts live where the test says.
	wrap []string
	// retryOffset is how far into daemon.log boot retries were counted;
	// retryTest is the test they are charged to (see trackRetries).
	retryMu     sync.Mutex
	retryOffset int64
	retryTest   testing.TB
	// expectRetries marks an instance whose boots fail on purpose: its
	// daemon's retries are reported but do not fail the test.
	expectRetries bool
	// tally is where retries are counted; nil means the suite's.
	tally *bootTally
	// extraEnv is added to the daemon's (and the CLI's) environment.
	extraEnv []string
}

func newInstance(t testing.TB, configTOML string) *instance {
	t.Helper()
	return newWrappedInstance(t, configTOML, nil)
}

// newWrappedInstance starts the daemon under wrap (argv prepended to the
// daemon's own).
func newWrappedInstance(t testing.TB, configTOML string, wrap []string, env ...string) *instance {
	t.Helper()
	// A short home keeps socket paths well under 108 bytes.
	home, err := os.MkdirTemp("/tmp", "bge")
	if err != nil {
		t.Fatal(err)
	}
	// Instances boot images cold unless a test asks for ready snapshots
	// ([image] in its config): an image build or promote would
	// otherwise boot and save the image once more, and every later
	// create of it would restore instead of boot.
	if !strings.Contains(configTOML, "[image]") {
		configTOML += "\n[image]\nready_snapshot = false\n"
	}
	{
		if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(configTOML), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	inst := &instance{t: t, home: home, wrap: wrap, extraEnv: env}
	inst.startDaemon()
	inst.trackRetries(t)
	return inst
}

func (in *instance) env() []string {
	env := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "BANGER_") {
			env = append(env, e)
		}
	}
	return append(append(env, in.extraEnv...), "BANGER_HOME="+in.home)
}

func (in *instance) socket() string { return filepath.Join(in.home, "banger.sock") }

func (in *instance) startDaemon() {
	in.t.Helper()
	logf, err := os.OpenFile(filepath.Join(in.home, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		in.t.Fatal(err)
	}
	argv := append(append([]string(nil), in.wrap...), bangerBin, "daemon", "--log-level", "debug")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = in.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		in.t.Fatalf("start daemon: %v", err)
	}
	in.daemon, in.logf = cmd, logf
	in.waitc = make(chan error, 1)
	go func() { in.waitc <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", in.socket()); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-in.waitc:
			in.t.Fatalf("daemon exited at start: %v\n%s", err, in.daemonLog())
		case <-time.After(100 * time.Millisecond):
		}
	}
	in.t.Fatalf("daemon did not listen within 30s\n%s", in.daemonLog())
}

// killDaemon SIGKILLs the daemon: no cleanup of any kind runs.
func (in *instance) killDaemon() {
	in.daemon.Process.Kill()
	<-in.waitc
	in.logf.Close()
}

// bootRetryMark is the daemon's log message when it boots a VM a second
// time because the first boot hung (internal/daemon/vm.go, boot).
const bootRetryMark = `msg="boot retried"`

// bootTally counts, per top-level test, every boot retry: the harness's
// own (createVM) and the daemon's (its log). A retry is never hidden: each
// is logged by the test, TestMain prints a summary, and a test that needed
// more than one retry fails (checkRetries), so an intermittent boot
// regression cannot pass as flakiness.
type bootTally struct {
	mu    sync.Mutex
	tests []string
	by    map[string]*retryCount
}

type retryCount struct {
	harness, daemon, expected int
	failed                    bool // checkRetries already failed the test
}

var boots = bootTally{by: map[string]*retryCount{}}

func topTest(t testing.TB) string { return strings.SplitN(t.Name(), "/", 2)[0] }

func (b *bootTally) add(t testing.TB, harness, daemon, expected int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	name := topTest(t)
	c := b.by[name]
	if c == nil {
		c = &retryCount{}
		b.by[name] = c
		b.tests = append(b.tests, name)
	}
	c.harness += harness
	c.daemon += daemon
	c.expected += expected
}

// summary is the end-of-suite report, "" when nothing was retried.
func (b *bootTally) summary() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var sb strings.Builder
	total := 0
	for _, name := range b.tests {
		c := b.by[name]
		n := c.harness + c.daemon + c.expected
		if n == 0 {
			continue
		}
		total += n
		fmt.Fprintf(&sb, "  %s: %d harness retry(ies), %d daemon boot retry(ies), %d expected (deliberately failing boots)\n", name, c.harness, c.daemon, c.expected)
	}
	if total == 0 {
		return "boot retries: none\n"
	}
	return fmt.Sprintf("boot retries: %d in all\n%s", total, sb.String())
}

// trackRetries charges the daemon's boot retries from now on to t, and
// checks t's tally when it ends. Called for every test that uses an
// instance (shared() calls it each time).
func (in *instance) trackRetries(t testing.TB) {
	in.retryMu.Lock()
	same := in.retryTest != nil && topTest(in.retryTest) == topTest(t)
	in.retryMu.Unlock()
	if same {
		return
	}
	in.collectRetries() // what happened before belongs to the previous test
	in.retryMu.Lock()
	in.retryTest = t
	in.retryMu.Unlock()
	// A shared instance's failures (a daemon that does not come back in
	// startDaemon) are reported on the test using it now, not on the
	// long-finished test that created it.
	in.t = t
	t.Cleanup(func() {
		in.collectRetries()
		checkRetries(t)
	})
}

// collectRetries counts the daemon's "boot retried" lines written since the
// last call and charges them to the tracked test.
func (in *instance) collectRetries() {
	in.retryMu.Lock()
	defer in.retryMu.Unlock()
	f, err := os.Open(filepath.Join(in.home, "daemon.log"))
	if err != nil {
		return // home already removed: shutdown collected last
	}
	defer f.Close()
	if _, err := f.Seek(in.retryOffset, io.SeekStart); err != nil {
		return
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return
	}
	// Count whole lines only; a half-written one is counted next time.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	in.retryOffset += int64(len(b))
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, bootRetryMark) {
			n++
			if in.retryTest != nil {
				in.retryTest.Logf("BOOT RETRY by the daemon: %s", line)
			}
		}
	}
	if n == 0 || in.retryTest == nil {
		return
	}
	tally := in.tally
	if tally == nil {
		tally = &boots
	}
	if in.expectRetries {
		tally.add(in.retryTest, 0, 0, n)
	} else {
		tally.add(in.retryTest, 0, n, 0)
	}
}

// checkRetries fails t when its run needed more than one boot retry.
func checkRetries(t testing.TB) {
	boots.mu.Lock()
	c := boots.by[topTest(t)]
	if c == nil || c.failed || c.harness+c.daemon <= 1 {
		boots.mu.Unlock()
		return
	}
	c.failed = true
	boots.mu.Unlock()
	if n := c.harness + c.daemon; n > 1 {
		t.Errorf("%s needed %d boot retries (%d by the harness, %d by the daemon): more than one means boots hang too often; see the BOOT RETRY lines", topTest(t), n, c.harness, c.daemon)
	}
}

func (in *instance) stopDaemon() {
	in.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.waitc:
	case <-time.After(15 * time.Second):
		in.daemon.Process.Kill()
		<-in.waitc
	}
	in.logf.Close()
}

func (in *instance) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(in.home, "daemon.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// shutdown deletes every VM (so no QEMU outlives the suite), stops the
// daemon and removes the home.
func (in *instance) shutdown() {
	res := in.run(nil, "vm", "list", "--json")
	var vms []api.VM
	_ = json.Unmarshal([]byte(res.stdout), &vms)
	for _, vm := range vms {
		in.run(nil, "vm", "delete", "--force", vm.Name)
	}
	in.stopDaemon()
	in.collectRetries()
	killInstanceProcesses(in.home)
	os.RemoveAll(in.home)
}

// killInstanceProcesses is the last line of defence against leaked VMs.
func killInstanceProcesses(home string) {
	for _, pid := range instanceProcesses(home) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// vmProcesses lists the processes of one VM of the instance (its VMM is
// named <instance prefix>-<VM id>), so a test checks its own VM and not
// whatever other VMs the instance runs.
func vmProcesses(home, id string) []int {
	prefix := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return home
		}
		return ""
	}, 0).InstancePrefix()
	var out []int
	for _, pid := range instanceProcesses(home) {
		cmdline, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(prefix+"-"+id)) {
			out = append(out, pid)
		}
	}
	return out
}

// instanceProcesses lists processes named with this instance's prefix.
func instanceProcesses(home string) []int {
	prefix := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return home
		}
		return ""
	}, 0).InstancePrefix()
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(prefix+"-")) {
			out = append(out, pid)
		}
	}
	return out
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// run runs the real CLI against this instance.
func (in *instance) run(stdin io.Reader, args ...string) result {
	return in.runCtx(context.Background(), stdin, args...)
}

func (in *instance) runCtx(ctx context.Context, stdin io.Reader, args ...string) result {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return in.runWrapped(ctx, stdin, nil, args...)
}

// runWrapped runs the real CLI under wrap (e.g. inside the daemon's
// network namespace, for commands that reach the guest's address).
func (in *instance) runWrapped(ctx context.Context, stdin io.Reader, wrap []string, args ...string) result {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	argv := append(append(append([]string(nil), wrap...), bangerBin), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = in.env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = stdin
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// must runs a command that has to succeed.
func (in *instance) must(t testing.TB, args ...string) result {
	t.Helper()
	r := in.run(nil, args...)
	if r.code != 0 {
		t.Fatalf("banger %s: %s\ndaemon log:\n%s", strings.Join(args, " "), r, in.daemonLog())
	}
	return r
}

func (in *instance) vm(t testing.TB, name string) api.VM {
	t.Helper()
	var vm api.VM
	r := in.must(t, "vm", "show", name, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil {
		t.Fatalf("parse vm show: %v\n%s", err, r.stdout)
	}
	return vm
}

// createVM creates a VM with no egress (an --egress in extra, which comes
// later, overrides it) and retries once when the boot hung with no
// console progress (TCG boots occasionally do).
func (in *instance) createVM(t testing.TB, name string, extra ...string) api.VM {
	t.Helper()
	args := append([]string{"vm", "create", name, "--egress", "none", "--json"}, extra...)
	for attempt := 1; ; attempt++ {
		r := in.run(nil, args...)
		if r.code == 0 {
			var vm api.VM
			if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil {
				t.Fatalf("parse vm create output: %v\n%s", err, r.stdout)
			}
			return vm
		}
		if attempt == 1 && noBootProgress(r.stderr) {
			boots.add(t, 1, 0, 0)
			t.Logf("BOOT RETRY by the harness: boot of %s made no progress; retrying once: %s", name, r.stderr)
			continue
		}
		t.Fatalf("vm create %s: %s\ndaemon log:\n%s", name, r, in.daemonLog())
	}
}

// noBootProgress recognises a boot that hung before the kernel printed
// anything to the console.
func noBootProgress(stderr string) bool {
	return strings.Contains(stderr, "did not answer within") && !strings.Contains(stderr, "systemd")
}

// shared returns the suite's instance with an image ready: imported from
// the cache outside the clone when its fingerprint is there, else built
// once and exported into the cache.
func shared(t testing.TB) *instance {
	t.Helper()
	requireVM(t)
	sharedOnce.Do(func() {
		// The daemon's auth files come from a temporary HOME of the test's
		// own, never from the real user's.
		var err error
		if authHome, err = os.MkdirTemp("", "bgeauth"); err != nil {
			sharedErr = err
			return
		}
		// A 1 MiB console cap lets TestVMLifecycle see rotation quickly.
		// Credentials are copied (the tests of the shared instance check
		// the copy; TestEgressGateway has the broker).
		inst := newInstance(t, fmt.Sprintf("[vm]\nboot_timeout = \"100s\"\n[auth]\nhome = %q\n[credentials]\nmode = \"copy\"\n[limits]\nconsole_log_mib = 1\n", authHome))
		sharedInst = inst
		sharedErr = ensureImage(t, inst)
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	sharedInst.trackRetries(t)
	ensureBaseDefault(t, sharedInst)
	return sharedInst
}

// ensureBaseDefault makes the base image the default again when an
// earlier test left another one promoted (or failed before restoring
// it): no test depends on an earlier one cleaning up after itself.
func ensureBaseDefault(t testing.TB, in *instance) {
	t.Helper()
	cfg := config.Default()
	base := image.DefaultSpec(cfg.Image.Suite, cfg.Image.Mirror, cfg.Image.SecurityMirror).Name
	var imgs []api.Image
	if err := json.Unmarshal([]byte(in.must(t, "image", "list", "--json").stdout), &imgs); err != nil {
		t.Fatalf("image list: %v", err)
	}
	for _, i := range imgs {
		if i.Default && i.Name != base {
			t.Logf("an earlier test left %s as the default image; promoting %s back", i.Name, base)
			in.must(t, "image", "promote", base)
			return
		}
	}
}

func imageCacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/banger-test"
}

func ensureImage(t testing.TB, inst *instance) error {
	cfg := config.Default()
	spec := image.DefaultSpec(cfg.Image.Suite, cfg.Image.Mirror, cfg.Image.SecurityMirror)
	cached := filepath.Join(imageCacheDir(), "images", spec.Fingerprint())
	if _, err := image.ReadMeta(cached); err == nil {
		t0 := time.Now()
		if r := inst.run(nil, "image", "import", cached); r.code != 0 {
			return fmt.Errorf("import cached image: %s", r)
		}
		t.Logf("imported cached image %s in %s", spec.Fingerprint()[:12], time.Since(t0).Round(time.Millisecond))
		return nil
	}
	t0 := time.Now()
	r := inst.run(nil, "image", "build", "--base")
	if r.code != 0 {
		return fmt.Errorf("image build: %s\ndaemon log:\n%s", r, inst.daemonLog())
	}
	t.Logf("built image in %s:\n%s", time.Since(t0).Round(time.Second), r.stderr)
	tmp := cached + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		return err
	}
	if r := inst.run(nil, "image", "export", spec.Name, tmp); r.code != 0 {
		return fmt.Errorf("export image to cache: %s", r)
	}
	return os.Rename(tmp, cached)
}

// ensureAgentImage registers the agent image (Node.js and the coding
// agents) in the instance, imported from the cache when its fingerprint
// is there, else built once (npm fetches from the registry) and exported
// into the cache. It is staged: VMs name it with --image.
func ensureAgentImage(t testing.TB, inst *instance) string {
	t.Helper()
	cfg := config.Default()
	spec := image.AgentSpec(cfg.Image.Suite, cfg.Image.Mirror, cfg.Image.SecurityMirror)
	if r := inst.run(nil, "image", "show", spec.Name); r.code == 0 {
		return spec.Name
	}
	cached := filepath.Join(imageCacheDir(), "images", spec.Fingerprint())
	if _, err := image.ReadMeta(cached); err == nil {
		t0 := time.Now()
		inst.must(t, "image", "import", cached)
		t.Logf("imported cached agent image %s in %s", spec.Fingerprint()[:12], time.Since(t0).Round(time.Millisecond))
		return spec.Name
	}
	t0 := time.Now()
	r := inst.run(nil, "image", "build")
	if r.code != 0 {
		t.Fatalf("agent image build: %s\ndaemon log:\n%s", r, inst.daemonLog())
	}
	t.Logf("built agent image in %s:\n%s", time.Since(t0).Round(time.Second), r.stderr)
	tmp := cached + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		t.Fatal(err)
	}
	inst.must(t, "image", "export", spec.Name, tmp)
	if err := os.Rename(tmp, cached); err != nil {
		t.Fatal(err)
	}
	return spec.Name
}

// hostListener listens on the host's 127.0.0.1 and counts the
// connections it accepts (and closes): a host service a guest must not
// reach.
func hostListener(t testing.TB) (port int, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}
