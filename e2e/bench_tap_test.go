package e2e

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkTapNetwork: host->guest throughput (200 MiB into `cat
// >/dev/null` over ssh) and ssh round-trip latency (`ssh true`) of a tap
// VM, against the same on a user-networking VM of the same instance as
// the baseline. Both VMs run at once in one network namespace and the
// measurements alternate, so noise hits both alike; all ssh runs start
// inside the namespace (the tap guest's address exists only there).
func BenchmarkTapNetwork(b *testing.B) {
	ns, in := tapInstance(b)
	in.createVM(b, "bench-tap", "--net", "tap")
	in.createVM(b, "bench-user", "--net", "user")
	const size = 200 << 20
	ctx := context.Background()
	push := func(name string) time.Duration {
		t0 := time.Now()
		r := in.runWrapped(ctx, io.LimitReader(zeros{}, size), ns.wrap(), "vm", "ssh", name, "--", "cat >/dev/null")
		if r.code != 0 {
			b.Fatalf("push to %s: %s", name, r)
		}
		return time.Since(t0)
	}
	rtt := func(name string) time.Duration {
		t0 := time.Now()
		if r := in.runWrapped(ctx, nil, ns.wrap(), "vm", "ssh", name, "--", "true"); r.code != 0 {
			b.Fatalf("ssh true to %s: %s", name, r)
		}
		return time.Since(t0)
	}
	var tapPush, userPush, tapRTT, userRTT []time.Duration
	for range 3 {
		tapPush = append(tapPush, push("bench-tap"))
		userPush = append(userPush, push("bench-user"))
	}
	for range benchRuns {
		tapRTT = append(tapRTT, rtt("bench-tap"))
		userRTT = append(userRTT, rtt("bench-user"))
	}
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	tp, up := median(tapPush), median(userPush)
	tr, ur := median(tapRTT), median(userRTT)
	fmt.Printf("\nhost->guest 200 MiB over ssh (median of 3, alternated)\n")
	fmt.Printf("  tap                   %8s  %7.1f MiB/s   %v\n", tp.Round(time.Millisecond), mbps(tp), tapPush)
	fmt.Printf("  user (baseline)       %8s  %7.1f MiB/s   %v\n", up.Round(time.Millisecond), mbps(up), userPush)
	fmt.Printf("  throughput tap/user   %8.2fx\n", mbps(tp)/mbps(up))
	fmt.Printf("ssh true round trip (median of %d, alternated)\n", benchRuns)
	fmt.Printf("  tap                   %8s   %v\n", tr.Round(time.Millisecond), tapRTT)
	fmt.Printf("  user (baseline)       %8s   %v\n", ur.Round(time.Millisecond), userRTT)
	fmt.Printf("  latency tap/user      %8.3f\n", float64(tr)/float64(ur))
	b.ReportMetric(mbps(tp), "tap-MiB/s")
	b.ReportMetric(mbps(up), "user-MiB/s")
	b.ReportMetric(float64(tr)/float64(ur), "rtt-ratio")
}
