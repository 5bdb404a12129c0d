package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkEgressGateway: a guest downloading 200 MiB from a server on
// the host's loopback, and opening new connections to it, through the
// egress gateway (--egress allow: the agent channel, the host's policy
// check and its own dial) against the same guest work with --egress all
// (QEMU's user networking straight to the host, no gateway) as the
// baseline. Both VMs run at once and the runs alternate. Timings are the
// guest's own clock, so no banger channel is in them. Then the daemon's
// and the guest agent's memory with 100 idle connections held open
// through the gateway.
func BenchmarkEgressGateway(b *testing.B) {
	requireVM(b)
	dir := b.TempDir()
	f := startFakeUpstreams(b, dir, "bench", hostListen(b))
	port := portOf(f.plainAddr)
	cfg := fmt.Sprintf(`[vm]
boot_timeout = "100s"
[auth]
files = []
[egress]
resolve = { "bench.test" = %q }
[egress.policy.bench]
allow = ["bench.test"]
`, f.plainAddr)
	in := newInstance(b, cfg)
	b.Cleanup(in.shutdown)
	if err := ensureImage(b, in); err != nil {
		b.Fatal(err)
	}
	// A later --egress overrides createVM's none.
	in.createVM(b, "bench-direct", "--egress", "all")
	in.createVM(b, "bench-gw", "--egress", "bench")

	// The gateway VM's address for bench.test is its fake address,
	// looked up once so the loop below times connections, not DNS
	// (the direct VM uses a literal address too).
	gwAddr := strings.Fields(in.must(b, "vm", "exec", "bench-gw", "--", "getent", "hosts", "bench.test").stdout)[0]
	hosts := map[string]string{"bench-direct": "10.0.2.2", "bench-gw": gwAddr}
	// /dev/tcp is bash's; guestTimed runs sh, so the fetch is a script.
	// Arguments: host, port, path, how many times (one new connection
	// each).
	const fetchScript = `for i in $(seq ${4:-1}); do exec 3<>/dev/tcp/$1/$2 || exit 1; printf 'GET %s HTTP/1.0\r\nHost: bench.test\r\n\r\n' "$3" >&3; cat <&3 >/dev/null; exec 3<&-; done`
	for vm := range hosts {
		if r := in.run(strings.NewReader(fetchScript), "vm", "exec", "-i", vm, "--", "sh", "-c", "cat > /tmp/fetch.sh"); r.code != 0 {
			b.Fatalf("write the fetch script to %s: %s", vm, r)
		}
	}
	fetch := func(vm, path string, n int) string {
		return fmt.Sprintf("bash /tmp/fetch.sh %s %s %s %d", hosts[vm], port, path, n)
	}
	const size = 200 << 20
	var gwDL, directDL []time.Duration
	for range benchRuns {
		gwDL = append(gwDL, guestTimed(b, in, "bench-gw", fetch("bench-gw", "/blob", 1)))
		directDL = append(directDL, guestTimed(b, in, "bench-direct", fetch("bench-direct", "/blob", 1)))
	}
	const conns = 20
	loop := func(vm string) string {
		return fetch(vm, "/tiny", conns)
	}
	var gwConn, directConn []time.Duration
	for range benchRuns {
		gwConn = append(gwConn, guestTimed(b, in, "bench-gw", loop("bench-gw"))/conns)
		directConn = append(directConn, guestTimed(b, in, "bench-direct", loop("bench-direct"))/conns)
	}
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	gd, dd := median(gwDL), median(directDL)
	gc, dc := median(gwConn), median(directConn)
	dlRatio, connRatio := mbps(gd)/mbps(dd), float64(gc)/float64(dc)
	fmt.Printf("\nguest download of 200 MiB from the host's loopback (median of %d, alternated)\n", benchRuns)
	fmt.Printf("  through the gateway   %8s  %7.1f MiB/s   %v\n", gd.Round(time.Millisecond), mbps(gd), gwDL)
	fmt.Printf("  direct (egress all)   %8s  %7.1f MiB/s   %v\n", dd.Round(time.Millisecond), mbps(dd), directDL)
	fmt.Printf("new connection + tiny HTTP answer (mean of %d, median of %d, alternated)\n", conns, benchRuns)
	fmt.Printf("  through the gateway   %8s   %v\n", gc.Round(time.Microsecond), gwConn)
	fmt.Printf("  direct (egress all)   %8s   %v\n", dc.Round(time.Microsecond), directConn)
	target(b, "egress download gateway/direct", fmt.Sprintf("%.2f", dlRatio), "≥ 0.8", dlRatio >= 0.8)
	target(b, "egress new connection gateway/direct", fmt.Sprintf("%.2f", connRatio), "≤ 1.5", connRatio <= 1.5)
	b.ReportMetric(dlRatio, "download-ratio")
	b.ReportMetric(connRatio, "conn-ratio")

	// 100 idle connections held by one guest process.
	agentRSS := func() int64 {
		out := in.must(b, "vm", "exec", "bench-gw", "--", "sh", "-c", "ps -o rss= -C banger-agent | awk '{s+=$1} END {print s}'").stdout
		kb, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		return kb << 10
	}
	d0, a0 := daemonRSS(b, in), agentRSS()
	in.must(b, "vm", "session", "start", "bench-gw", "--name", "idle", "--", "bash", "-c",
		fmt.Sprintf(`for i in $(seq 100); do exec {fd}<>/dev/tcp/%s/%s || exit 1; done; echo open; sleep 600`, gwAddr, port))
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(in.must(b, "vm", "session", "logs", "bench-gw", "idle").stdout, "open") {
		if time.Now().After(deadline) {
			b.Fatalf("100 idle connections did not open: %s", in.run(nil, "vm", "session", "logs", "bench-gw", "idle", "--stderr"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	d1, a1 := daemonRSS(b, in), agentRSS()
	in.run(nil, "vm", "session", "stop", "bench-gw", "idle")
	mib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	fmt.Printf("100 idle connections through the gateway\n")
	fmt.Printf("  daemon RSS            %s -> %s (+%s)\n", mib(d0), mib(d1), mib(d1-d0))
	fmt.Printf("  guest agent RSS       %s -> %s (+%s)\n", mib(a0), mib(a1), mib(a1-a0))
	b.ReportMetric(float64(d1-d0)/(1<<20), "daemon-MiB/100conns")
}
