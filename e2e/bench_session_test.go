package e2e

import (
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// BenchmarkSession, on one VM in one run, 200 MiB of a guest file to the
// host by every path, alternated (median of benchRuns):
//
//   - raw port: `cat FILE > /dev/virtio-ports/bench` in the guest, the host
//     reading the port's socket itself; nothing of banger on the path;
//   - pipe floor: `cat FILE | cat > /dev/null` inside the guest, by the
//     guest's clock: what a guest pipe alone costs, no channel at all;
//   - banger: `vm exec -- cat FILE` (CLI -> daemon -> yamux -> agent) and
//     `vm session attach` to a session that cats the file;
//   - ssh: `vm ssh -- cat FILE`, the third reference.
//
// exec and attach are reported as ratios to the raw port and to the pipe
// floor. Then the one-byte echo round trip through attach and ssh, and
// the daemon's idle RSS.
func BenchmarkSession(b *testing.B) {
	in := benchShared(b)
	const vm = "bench-sess"
	info := in.createVM(b, vm)
	defer in.run(nil, "vm", "delete", "--force", vm)
	const size = 200 << 20
	const file = "/root/bench-200m"
	in.must(b, "vm", "exec", vm, "--", "sh", "-c", fmt.Sprintf("head -c %d /dev/urandom > %s && cat %s > /dev/null", size, file, file))

	// count runs the CLI with stdin and returns how long it took to get
	// size bytes on stdout and exit 0.
	count := func(stdin io.Reader, args ...string) time.Duration {
		cmd := exec.Command(bangerBin, args...)
		cmd.Env = in.env()
		cmd.Stdin = stdin
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		var errb strings.Builder
		cmd.Stderr = &errb
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		n, _ := copyCount(out)
		if err := cmd.Wait(); err != nil || n != size {
			b.Fatalf("%v: %v, got %d bytes: %s", args, err, n, errb.String())
		}
		return time.Since(t0)
	}
	var portT, floorT, execT, attachT, sshT []time.Duration
	for i := 0; i < benchRuns; i++ {
		portT = append(portT, rawPortPull(b, in, info, file, size))
		floorT = append(floorT, guestTimed(b, in, vm, "cat "+file+" | cat > /dev/null"))
		execT = append(execT, count(nil, "vm", "exec", vm, "--", "cat", file))
		// The session waits for a line before it writes, so that nothing
		// is produced before the attacher is there (unattached output
		// only lives in the bounded logs); the timing starts with attach.
		name := fmt.Sprintf("cat%d", i)
		in.must(b, "vm", "session", "start", vm, "--name", name, "--", "sh", "-c", "read x; exec cat "+file)
		attachT = append(attachT, count(strings.NewReader("go\n"), "vm", "session", "attach", vm, name))
		sshT = append(sshT, count(nil, "vm", "ssh", vm, "--", "cat", file))
	}
	pm, fm, em, am, sm := median(portT), median(floorT), median(execT), median(attachT), median(sshT)
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	fmt.Printf("\nguest file -> host, 200 MiB (median of %d, alternated, one VM)\n", benchRuns)
	row := func(label string, d time.Duration, all []time.Duration) {
		fmt.Printf("  %-34s %8s  %7.1f MiB/s   %v\n", label, d.Round(time.Millisecond), mbps(d), all)
	}
	row("raw virtio-serial port (no banger)", pm, portT)
	row("guest pipe floor (cat | cat)", fm, floorT)
	row("banger vm exec", em, execT)
	row("banger session attach", am, attachT)
	row("ssh (vm ssh)", sm, sshT)
	fmt.Printf("  %-34s %8s %8s\n", "ratio of throughput", "/raw", "/floor")
	for _, r := range []struct {
		label string
		d     time.Duration
	}{{"vm exec", em}, {"session attach", am}, {"ssh", sm}} {
		fmt.Printf("  %-34s %8.2f %8.2f\n", r.label, mbps(r.d)/mbps(pm), mbps(r.d)/mbps(fm))
	}
	attachRaw := mbps(am) / mbps(pm)
	target(b, "session attach / raw port", fmt.Sprintf("%.2f", attachRaw), ">= 0.7", attachRaw >= 0.7)
	b.ReportMetric(mbps(pm), "rawport-MiB/s")
	b.ReportMetric(mbps(fm), "floor-MiB/s")
	b.ReportMetric(mbps(am), "attach-MiB/s")
	b.ReportMetric(mbps(em), "exec-MiB/s")
	b.ReportMetric(mbps(sm), "ssh-MiB/s")

	// Latency: one byte out, the same byte back, through a guest `cat`.
	in.must(b, "vm", "session", "start", vm, "--name", "echo", "--", "cat")
	attachRTT := echoRTT(b, in, "vm", "session", "attach", vm, "echo")
	sshRTT := echoRTT(b, in, "vm", "ssh", vm, "--", "cat")
	fmt.Printf("\none-byte echo round trip (median of %d)\n", echoRounds)
	fmt.Printf("  session attach  %8s\n", attachRTT.Round(time.Microsecond))
	fmt.Printf("  ssh             %8s\n", sshRTT.Round(time.Microsecond))
	fmt.Printf("  ratio attach/ssh %7.2f   (below 1: attach is faster)\n", float64(attachRTT)/float64(sshRTT))
	b.ReportMetric(float64(attachRTT.Microseconds())/1000, "attach-rtt-ms")
	b.ReportMetric(float64(sshRTT.Microseconds())/1000, "ssh-rtt-ms")

	// The daemon's idle RSS, with this VM running and no request in
	// flight: wait until two samples a second apart agree within 5%.
	rss := daemonRSS(b, in)
	for i := 0; i < 10; i++ {
		time.Sleep(time.Second)
		next := daemonRSS(b, in)
		settled := next > rss*95/100 && next < rss*105/100
		rss = next
		if settled {
			break
		}
	}
	fmt.Printf("\ndaemon idle RSS (1 VM running): %.1f MiB\n", float64(rss)/(1<<20))
	b.ReportMetric(float64(rss)/(1<<20), "daemon-RSS-MiB")
}

const echoRounds = 50

// echoRTT runs the CLI with pipes, warms up, then times echoRounds
// one-byte round trips and returns the median.
func echoRTT(b *testing.B, in *instance, args ...string) time.Duration {
	cmd := exec.Command(bangerBin, args...)
	cmd.Env = in.env()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	one := []byte{'x'}
	back := make([]byte, 1)
	round := func() time.Duration {
		t0 := time.Now()
		if _, err := stdin.Write(one); err != nil {
			b.Fatalf("%v: write: %v: %s", args, err, errb.String())
		}
		if _, err := io.ReadFull(stdout, back); err != nil {
			b.Fatalf("%v: read: %v: %s", args, err, errb.String())
		}
		return time.Since(t0)
	}
	for i := 0; i < 5; i++ {
		round()
	}
	var ds []time.Duration
	for i := 0; i < echoRounds; i++ {
		ds = append(ds, round())
	}
	return median(ds)
}
