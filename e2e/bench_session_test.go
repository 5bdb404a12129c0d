package e2e

import (
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// BenchmarkSession, on one VM in one run: 200 MiB of a guest file's
// `cat` through `vm session attach` next to the raw agent channel (`vm
// exec -- cat`, the baseline; target >= 0.7 of it) and next to `vm ssh
// -- cat`; then the round trip of a one-byte echo through attach and
// through ssh.
func BenchmarkSession(b *testing.B) {
	in := shared(b)
	const vm = "bench-sess"
	in.createVM(b, vm)
	defer in.run(nil, "vm", "delete", "--force", vm)
	const size = 200 << 20
	const file = "/root/bench-200m"
	in.must(b, "vm", "exec", vm, "--", "sh", "-c", fmt.Sprintf("head -c %d /dev/urandom > %s", size, file))

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
	var execT, attachT, sshT []time.Duration
	for i := 0; i < 3; i++ {
		execT = append(execT, count(nil, "vm", "exec", vm, "--", "cat", file))
		// The session waits for a line before it writes, so that nothing
		// is produced before the attacher is there (unattached output
		// only lives in the bounded logs); the timing starts with attach.
		name := fmt.Sprintf("cat%d", i)
		in.must(b, "vm", "session", "start", vm, "--name", name, "--", "sh", "-c", "read x; exec cat "+file)
		attachT = append(attachT, count(strings.NewReader("go\n"), "vm", "session", "attach", vm, name))
		sshT = append(sshT, count(nil, "vm", "ssh", vm, "--", "cat", file))
	}
	em, am, sm := median(execT), median(attachT), median(sshT)
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	fmt.Printf("\nsession throughput: cat of a 200 MiB guest file (median of 3, alternated)\n")
	fmt.Printf("  raw agent channel (vm exec)  %8s  %7.1f MiB/s   %v\n", em.Round(time.Millisecond), mbps(em), execT)
	fmt.Printf("  session attach               %8s  %7.1f MiB/s   %v\n", am.Round(time.Millisecond), mbps(am), attachT)
	fmt.Printf("  ssh (vm ssh)                 %8s  %7.1f MiB/s   %v\n", sm.Round(time.Millisecond), mbps(sm), sshT)
	fmt.Printf("  ratio attach/raw channel     %8.2f   (target >= 0.7)\n", mbps(am)/mbps(em))
	fmt.Printf("  speedup attach/ssh           %8.2fx\n", mbps(am)/mbps(sm))
	b.ReportMetric(mbps(am), "attach-MiB/s")
	b.ReportMetric(mbps(em), "exec-MiB/s")
	b.ReportMetric(mbps(sm), "ssh-MiB/s")
	b.ReportMetric(mbps(am)/mbps(em), "attach/exec")

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
