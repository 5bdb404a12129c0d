package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
)

// BenchmarkImageBuild: `banger image build --base` in a fresh instance,
// split by stage, alternated with the raw recipe a person would type:
// exactly the mmdebstrap command banger runs (image.BootstrapArgs), then
// mkfs.ext4 -d with banger's options; BENCH_IMAGE_RUNS pairs (default 2),
// medians. Then a rebuild with unchanged inputs, which must do no work
// (target < 1 s), next to the cheapest daemon round trip (`banger image
// list`).
func BenchmarkImageBuild(b *testing.B) {
	requireVM(b)
	in := newInstance(b, "")
	defer in.shutdown()

	runs := envInt("BENCH_IMAGE_RUNS", 2)
	var builds, hostSides, raws []time.Duration
	var op api.Operation
	for i := 0; i < runs; i++ {
		raws = append(raws, rawImageBuild(b))
		if i > 0 {
			in.must(b, "image", "delete", "bench-base")
		}
		t0 := time.Now()
		r := in.run(nil, "image", "build", "--base", "--name", "bench-base")
		builds = append(builds, time.Since(t0))
		if r.code != 0 {
			b.Fatalf("image build: %s\n%s", r, in.daemonLog())
		}
		op = lastOperation(b, in, "image.build")
		var hostSide time.Duration
		for _, s := range op.Stages {
			if s.FinishedAt != nil && s.Name != "verify" && s.Name != "register" {
				hostSide += s.FinishedAt.Sub(s.StartedAt)
			}
		}
		hostSides = append(hostSides, hostSide)
	}
	build, hostSide, raw := median(builds), median(hostSides), median(raws)

	fmt.Printf("\nimage build --base (median of %d, alternated with raw; network fetches included)\n", runs)
	for _, s := range op.Stages {
		if s.FinishedAt != nil {
			fmt.Printf("  stage %-12s %8s   (last run)\n", s.Name, s.FinishedAt.Sub(s.StartedAt).Round(100*time.Millisecond))
		}
	}
	fmt.Printf("  banger total          %8s   %v\n", build.Round(100*time.Millisecond), builds)
	fmt.Printf("  banger host-side      %8s   %v   (all stages but verify and register)\n", hostSide.Round(100*time.Millisecond), hostSides)
	fmt.Printf("  raw mmdebstrap+mkfs   %8s   %v\n", raw.Round(100*time.Millisecond), raws)
	fmt.Printf("  ratio host-side/raw   %8.3f   (banger adds customize, kernel, manifest; verify boots)\n", float64(hostSide)/float64(raw))

	var noop, list []time.Duration
	for i := 0; i < benchRuns; i++ {
		t0 := time.Now()
		r := in.must(b, "image", "build", "--base", "--name", "bench-base")
		noop = append(noop, time.Since(t0))
		if !strings.Contains(r.stderr, "fingerprint") || strings.Contains(r.stderr, "bootstrap") {
			b.Fatalf("rebuild with unchanged inputs did work:\n%s", r.stderr)
		}
		t0 = time.Now()
		in.must(b, "image", "list")
		list = append(list, time.Since(t0))
	}
	nm, lm := median(noop), median(list)
	fmt.Printf("rebuild with unchanged inputs (median of %d)\n", benchRuns)
	fmt.Printf("  banger image build    %8s   %v\n", nm.Round(time.Millisecond), noop)
	fmt.Printf("  banger image list     %8s   %v\n", lm.Round(time.Millisecond), list)
	fmt.Printf("  ratio build/list      %8.3f\n", float64(nm)/float64(lm))
	target(b, "no-op image rebuild", nm.Round(time.Millisecond).String(), "< 1s", nm < time.Second)
	b.ReportMetric(build.Seconds(), "build-s")
	b.ReportMetric(raw.Seconds(), "raw-s")
	b.ReportMetric(nm.Seconds(), "noop-s")
}

func lastOperation(b testing.TB, in *instance, kind string) api.Operation {
	var ops []api.Operation
	json.Unmarshal([]byte(in.must(b, "op", "list", "--json").stdout), &ops)
	for _, o := range ops {
		if o.Kind == kind {
			var full api.Operation
			json.Unmarshal([]byte(in.must(b, "op", "show", o.ID, "--json").stdout), &full)
			return full
		}
	}
	b.Fatalf("no %s operation in %v", kind, ops)
	return api.Operation{}
}

// rawImageBuild runs the base image's mmdebstrap command (the very
// arguments banger uses) and mkfs by hand.
func rawImageBuild(b testing.TB) time.Duration {
	cfg := config.Default()
	spec := image.DefaultSpec(cfg.Image.Suite, cfg.Image.Mirror, cfg.Image.SecurityMirror)
	dir, err := os.MkdirTemp("/var/tmp", "bench-raw-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "rootfs")
	t0 := time.Now()
	if out, err := exec.Command("mmdebstrap", image.BootstrapArgs(spec, root)...).CombinedOutput(); err != nil {
		b.Fatalf("raw mmdebstrap: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("truncate", "-s", "2G", img).CombinedOutput(); err != nil {
		b.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", image.LabelRoot, "-E", "root_owner=0:0", "-d", root, img).CombinedOutput(); err != nil {
		b.Fatalf("raw mkfs: %v\n%s", err, out)
	}
	return time.Since(t0)
}
