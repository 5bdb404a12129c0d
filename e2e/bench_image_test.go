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

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
)

// BenchmarkImageBuild: `banger image build --base` in a fresh instance,
// split by stage, next to the raw recipe a person would type (the same
// mmdebstrap call, then mkfs.ext4 -d) run in the same benchmark; then a
// rebuild with unchanged inputs, which must do no work (target < 1 s),
// next to the cheapest daemon round trip (`banger image list`).
func BenchmarkImageBuild(b *testing.B) {
	requireVM(b)
	in := newInstance(b, "")
	defer in.shutdown()

	t0 := time.Now()
	r := in.run(nil, "image", "build", "--base", "--name", "bench-base")
	build := time.Since(t0)
	if r.code != 0 {
		b.Fatalf("image build: %s\n%s", r, in.daemonLog())
	}
	op := lastOperation(b, in, "image.build")
	raw := rawImageBuild(b)

	fmt.Printf("\nimage build --base (one run each; network fetches included)\n")
	var hostSide time.Duration
	for _, s := range op.Stages {
		d := s.FinishedAt.Sub(s.StartedAt)
		fmt.Printf("  stage %-12s %8s\n", s.Name, d.Round(100*time.Millisecond))
		if s.Name != "verify" && s.Name != "register" {
			hostSide += d
		}
	}
	fmt.Printf("  banger total          %8s\n", build.Round(100*time.Millisecond))
	fmt.Printf("  raw mmdebstrap+mkfs   %8s\n", raw.Round(100*time.Millisecond))
	fmt.Printf("  ratio host-side/raw   %8.3f   (banger adds customize, agent, kernel, manifest; verify boots)\n", float64(hostSide)/float64(raw))

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
	fmt.Printf("  banger image build    %8s   %v   (target < 1s)\n", nm.Round(time.Millisecond), noop)
	fmt.Printf("  banger image list     %8s   %v\n", lm.Round(time.Millisecond), list)
	fmt.Printf("  ratio build/list      %8.3f\n", float64(nm)/float64(lm))
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

// rawImageBuild runs the base image's mmdebstrap command and mkfs by hand.
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
	args := append([]string{"--quiet", "--variant=minbase", "--include=" + strings.Join(spec.Packages, ","), "--components=main", spec.Suite, root}, spec.Sources()...)
	if out, err := exec.Command("mmdebstrap", args...).CombinedOutput(); err != nil {
		b.Fatalf("raw mmdebstrap: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("truncate", "-s", "2G", img).CombinedOutput(); err != nil {
		b.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img).CombinedOutput(); err != nil {
		b.Fatalf("raw mkfs: %v\n%s", err, out)
	}
	return time.Since(t0)
}
