package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// The benchmarks print ratios against raw baselines measured in the same
// run, alternating the two so machine noise hits both alike. Run them with
// `make bench` (go test -run '^$' -bench . -benchtime 1x ./e2e).

const benchRuns = 5

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkCreateToReady: `banger vm create` until the agent's /healthz
// answered, next to raw qemu-system-x86_64 booting the same kernel, initrd
// and rootfs (same seed and work disks) until the same agent answers.
func BenchmarkCreateToReady(b *testing.B) {
	in := shared(b)
	img := defaultImage(b, in)
	var bangerTimes, rawTimes []time.Duration
	for i := 0; i < benchRuns; i++ {
		name := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		in.createVM(b, name)
		bangerTimes = append(bangerTimes, time.Since(t0))
		in.must(b, "vm", "delete", "--force", name)

		rawTimes = append(rawTimes, rawBoot(b, img))
	}
	bm, rm := median(bangerTimes), median(rawTimes)
	fmt.Printf("\ncreate-to-ready (median of %d, alternated)\n", benchRuns)
	fmt.Printf("  banger vm create      %8s   %v\n", bm.Round(time.Millisecond), bangerTimes)
	fmt.Printf("  raw qemu boot         %8s   %v\n", rm.Round(time.Millisecond), rawTimes)
	fmt.Printf("  ratio banger/raw      %8.3f   (target <= 1.10)\n", float64(bm)/float64(rm))
	b.ReportMetric(bm.Seconds(), "banger-s")
	b.ReportMetric(rm.Seconds(), "raw-s")
	b.ReportMetric(float64(bm)/float64(rm), "ratio")
}

func defaultImage(b testing.TB, in *instance) api.Image {
	r := in.must(b, "image", "list", "--json")
	var imgs []api.Image
	json.Unmarshal([]byte(r.stdout), &imgs)
	for _, i := range imgs {
		if i.Default {
			return i
		}
	}
	b.Fatal("no default image")
	return api.Image{}
}

// rawBoot boots the image with QEMU directly (disks prepared beforehand,
// outside the timing) and returns the time until the agent answers.
func rawBoot(b testing.TB, img api.Image) time.Duration {
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
	spec := vmm.Spec{
		ID: "raw", ProcessName: "banger-raw-bench", Dir: dir,
		Kernel: filepath.Join(img.Dir, image.FileKernel), Initrd: filepath.Join(img.Dir, image.FileInitrd),
		Cmdline: image.KernelCmdline(append([]string{"banger.ip=10.0.2.15/24", "banger.gw=10.0.2.2", "banger.dns=10.0.2.3"}, qemu.TCGKernelArgs()...)...),
		Disks: []vmm.Disk{
			{Path: filepath.Join(dir, "root.qcow2"), Format: "qcow2"},
			{Path: filepath.Join(dir, "seed.ext4"), Format: "raw", ReadOnly: true},
			{Path: filepath.Join(dir, "work.ext4"), Format: "raw"},
		},
		CPUs: 2, MemoryMiB: 1024, Accel: "tcg", Egress: "none",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t0 := time.Now()
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

// BenchmarkChannel: 200 MB from the guest to the host through banger's
// agent channel (`vm exec`, via the daemon) next to ssh over the forwarded
// port, on the same VM.
func BenchmarkChannel(b *testing.B) {
	in := shared(b)
	const name = "bench-chan"
	in.createVM(b, name)
	defer in.run(nil, "vm", "delete", "--force", name)
	const size = 200 << 20
	produce := fmt.Sprintf("head -c %d /dev/zero", size)
	measure := func(args ...string) time.Duration {
		t0 := time.Now()
		cmd := exec.Command(bangerBin, args...)
		cmd.Env = in.env()
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		n, _ := copyCount(out)
		if err := cmd.Wait(); err != nil || n != size {
			b.Fatalf("%v: %v, got %d bytes", args, err, n)
		}
		return time.Since(t0)
	}
	var agentT, sshT []time.Duration
	for i := 0; i < 3; i++ {
		agentT = append(agentT, measure("vm", "exec", name, "--", "sh", "-c", produce))
		sshT = append(sshT, measure("vm", "ssh", name, "--", produce))
	}
	am, sm := median(agentT), median(sshT)
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	fmt.Printf("\nguest->host 200 MiB (median of 3, alternated)\n")
	fmt.Printf("  agent channel (vm exec)  %8s  %7.1f MiB/s\n", am.Round(time.Millisecond), mbps(am))
	fmt.Printf("  ssh (vm ssh)             %8s  %7.1f MiB/s\n", sm.Round(time.Millisecond), mbps(sm))
	fmt.Printf("  speedup agent/ssh        %8.2fx\n", float64(sm)/float64(am))
	b.ReportMetric(mbps(am), "agent-MiB/s")
	b.ReportMetric(mbps(sm), "ssh-MiB/s")

	// The daemon's idle RSS, with this VM running.
	time.Sleep(2 * time.Second)
	rss := daemonRSS(b, in)
	fmt.Printf("\ndaemon idle RSS (1 VM running): %.1f MiB\n", float64(rss)/(1<<20))
	b.ReportMetric(float64(rss)/(1<<20), "daemon-RSS-MiB")
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
