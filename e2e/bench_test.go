package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// The benchmarks print ratios against raw baselines measured in the same
// run, alternating the two so machine noise hits both alike. Run them with
// `make bench` (go test -run '^$' -bench . -benchtime 1x ./e2e). Every
// target is printed next to its figure as it is measured, and the run ends
// with "N of M targets met" (exit status 1 for a miss only under
// BENCH_STRICT=1).

// benchRuns is how many alternated runs a median is taken over
// (BENCH_RUNS overrides it).
var benchRuns = envInt("BENCH_RUNS", 5)

func envInt(key string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(key)); err == nil && n > 0 {
		return n
	}
	return def
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// benchTarget is one target a benchmark checks, with the figure it got.
type benchTarget struct {
	bench, name, figure, want string
	met                       bool
}

var targets struct {
	mu   sync.Mutex
	list []benchTarget
}

// target records and prints a target next to its figure.
func target(b testing.TB, name, figure, want string, met bool) {
	t := benchTarget{bench: b.Name(), name: name, figure: figure, want: want, met: met}
	targets.mu.Lock()
	targets.list = append(targets.list, t)
	targets.mu.Unlock()
	fmt.Printf("  TARGET %-34s %10s  want %-10s %s\n", name, figure, want, verdict(met))
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

// targetSummary lists every target of the run and ends with "N of M
// targets met"; missed is true when any was not.
func targetSummary() (summary string, missed bool) {
	targets.mu.Lock()
	defer targets.mu.Unlock()
	if len(targets.list) == 0 {
		return "", false
	}
	var sb strings.Builder
	met := 0
	sb.WriteString("\nbenchmark targets\n")
	for _, t := range targets.list {
		if t.met {
			met++
		}
		fmt.Fprintf(&sb, "  %-26s %-34s %10s  want %-10s %s\n", t.bench, t.name, t.figure, t.want, verdict(t.met))
	}
	fmt.Fprintf(&sb, "%d of %d targets met\n", met, len(targets.list))
	return sb.String(), met < len(targets.list)
}

var (
	benchOnce sync.Once
	benchInst *instance
	benchErr  error
	benchAuth string
)

// benchPort is the raw virtio-serial port every benchmark VM gets
// ([vm] extra_serial_ports): nothing of banger is on it.
const benchPort = "bench"

// benchShared is the benchmarks' instance: like shared(), plus the raw
// port on every VM, so raw baselines run in the very VM banger is
// measured in.
func benchShared(b testing.TB) *instance {
	b.Helper()
	requireVM(b)
	benchOnce.Do(func() {
		var err error
		if benchAuth, err = os.MkdirTemp("", "bgbauth"); err != nil {
			benchErr = err
			return
		}
		benchInst = newInstance(b, fmt.Sprintf("[vm]\nboot_timeout = \"100s\"\nextra_serial_ports = [%q]\n[auth]\nhome = %q\n", benchPort, benchAuth))
		benchErr = ensureImage(b, benchInst)
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	benchInst.trackRetries(b)
	return benchInst
}

// shutdownBench is called by TestMain.
func shutdownBench() {
	if benchInst != nil {
		benchInst.shutdown()
	}
	if benchAuth != "" {
		os.RemoveAll(benchAuth)
	}
}

// BenchmarkCreateToReady: `banger vm create` until the agent's /healthz
// answered, next to raw qemu-system-x86_64 booting the same kernel, initrd
// and rootfs until the same agent answers. The raw timing includes the
// same disk preparation create does (qcow2 overlay, seed and work disks
// made with mkfs.ext4 -d) and uses the accelerator banger's VM got.
func BenchmarkCreateToReady(b *testing.B) {
	in := benchShared(b)
	img := baseImage(b, in)
	var bangerTimes, rawTimes []time.Duration
	accel := ""
	for i := 0; i < benchRuns; i++ {
		name := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		vm := in.createVM(b, name)
		bangerTimes = append(bangerTimes, time.Since(t0))
		accel = vm.Accel
		in.must(b, "vm", "delete", "--force", name)

		rawTimes = append(rawTimes, rawBoot(b, img, accel))
	}
	bm, rm := median(bangerTimes), median(rawTimes)
	ratio := float64(bm) / float64(rm)
	fmt.Printf("\ncreate-to-ready (median of %d, alternated; accelerator %s; both include disk preparation)\n", benchRuns, accel)
	fmt.Printf("  banger vm create      %8s   %v\n", bm.Round(time.Millisecond), bangerTimes)
	fmt.Printf("  raw qemu boot         %8s   %v\n", rm.Round(time.Millisecond), rawTimes)
	target(b, "create-to-ready banger/raw", fmt.Sprintf("%.3f", ratio), "<= 1.10", ratio <= 1.10)
	b.ReportMetric(bm.Seconds(), "banger-s")
	b.ReportMetric(rm.Seconds(), "raw-s")
	b.ReportMetric(ratio, "ratio")
}

// rawBoot prepares the disks as create does and boots the image with
// QEMU directly, returning the time from the first disk command until the
// agent answers.
func rawBoot(b testing.TB, img api.Image, accel string) time.Duration {
	dir, err := os.MkdirTemp("/tmp", "bgr")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	if accel == "" {
		accel = "tcg"
	}
	t0 := time.Now()
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(img.Dir, image.FileRootfs), "-F", "raw", filepath.Join(dir, "root.qcow2"))
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(seed, 0o700)
	run("cp", filepath.Join(repoRoot, "bin", "banger-agent"), filepath.Join(seed, "banger-agent"))
	priv, _, _ := sshkeys.GenerateEd25519()
	cfg, _ := json.Marshal(map[string]any{"hostname": "raw", "ssh_host_keys": map[string]string{"ed25519": string(priv)}, "authorized_keys": ""})
	os.WriteFile(filepath.Join(seed, "config.json"), cfg, 0o600)
	run("truncate", "-s", "32M", filepath.Join(dir, "seed.ext4"))
	run("mkfs.ext4", "-q", "-F", "-L", image.LabelSeed, "-d", seed, filepath.Join(dir, "seed.ext4"))
	run("truncate", "-s", "4G", filepath.Join(dir, "work.ext4"))
	run("mkfs.ext4", "-q", "-F", "-L", image.LabelWork, "-d", filepath.Join(img.Dir, image.DirWorkSeed), filepath.Join(dir, "work.ext4"))
	args := []string{"banger.ip=10.0.2.15/24", "banger.gw=10.0.2.2", "banger.dns=10.0.2.3"}
	if accel != "kvm" {
		args = append(args, qemu.TCGKernelArgs()...)
	}
	spec := vmm.Spec{
		ID: "raw", ProcessName: "banger-raw-bench", Dir: dir,
		Kernel: filepath.Join(img.Dir, image.FileKernel), Initrd: filepath.Join(img.Dir, image.FileInitrd),
		Cmdline: image.KernelCmdline(args...),
		Disks: []vmm.Disk{
			{Path: filepath.Join(dir, "root.qcow2"), Format: "qcow2"},
			{Path: filepath.Join(dir, "seed.ext4"), Format: "raw", ReadOnly: true},
			{Path: filepath.Join(dir, "work.ext4"), Format: "raw"},
		},
		CPUs: 2, MemoryMiB: 1024, Accel: accel, Egress: "none",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu.Binary, qemu.Args(spec)...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c, err := agentclient.WaitReady(ctx, func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "agent.sock"))
	}, 3*time.Second)
	if err != nil {
		b.Fatalf("raw boot: agent did not answer: %v", err)
	}
	d := time.Since(t0)
	c.Close()
	return d
}

// rawPortPull times size bytes of a guest file through the raw port: the
// guest runs `cat FILE > /dev/virtio-ports/bench` (started through the
// agent, a few hundred bytes), the host reads the port's socket directly.
// The clock runs from starting the guest command to the last byte.
func rawPortPull(b testing.TB, in *instance, vm api.VM, file string, size int64) time.Duration {
	c, err := net.Dial("unix", vmm.ExtraSerialSocket(vm.Dir, benchPort))
	if err != nil {
		b.Fatalf("connect to the raw port: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute)) // a stuck port fails, not hangs
	done := make(chan result, 1)
	t0 := time.Now()
	go func() {
		done <- in.run(nil, "vm", "exec", vm.Name, "--", "sh", "-c", "cat "+file+" > /dev/virtio-ports/"+benchPort)
	}()
	n, err := io.CopyN(io.Discard, c, size)
	d := time.Since(t0)
	if r := <-done; r.code != 0 || err != nil || n != size {
		b.Fatalf("raw port pull: %d of %d bytes (%v): %s", n, size, err, r)
	}
	return d
}

// rawPortPush times the files' bytes from the host into the guest through
// the raw port, read by `head -c TOTAL /dev/virtio-ports/bench >
// /dev/null` in the guest; done when the guest command has exited.
func rawPortPush(b testing.TB, in *instance, vm api.VM, files ...string) time.Duration {
	var total int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		total += st.Size()
	}
	c, err := net.Dial("unix", vmm.ExtraSerialSocket(vm.Dir, benchPort))
	if err != nil {
		b.Fatalf("connect to the raw port: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	done := make(chan result, 1)
	t0 := time.Now()
	go func() {
		done <- in.run(nil, "vm", "exec", vm.Name, "--", "sh", "-c", fmt.Sprintf("head -c %d /dev/virtio-ports/%s > /dev/null", total, benchPort))
	}()
	// QEMU reads the socket only as fast as the guest takes the bytes
	// (it stops reading while the guest has no buffers posted), so
	// nothing is lost before the guest opens the port.
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(c, fh)
		fh.Close()
		if err != nil {
			b.Fatalf("raw port push: %v", err)
		}
	}
	if r := <-done; r.code != 0 {
		b.Fatalf("raw port push: guest side: %s", r)
	}
	return time.Since(t0)
}

// guestTimed runs script in the guest and returns how long it took by the
// guest's own clock (so no channel is in the figure).
func guestTimed(b testing.TB, in *instance, vm, script string) time.Duration {
	r := in.must(b, "vm", "exec", vm, "--", "sh", "-c", "s=$(date +%s%N); "+script+"; e=$(date +%s%N); echo $((e-s))")
	lines := strings.Fields(r.stdout)
	ns, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		b.Fatalf("guest timing of %q: %v: %s", script, err, r)
	}
	return time.Duration(ns)
}

func copyCount(r interface{ Read([]byte) (int, error) }) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if err != nil {
			return n, nil
		}
	}
}

func daemonRSS(b testing.TB, in *instance) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.daemon.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
