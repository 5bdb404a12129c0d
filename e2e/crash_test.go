package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
)

// TestCrashLeavesNothing kills the daemon with SIGKILL at random moments
// of `vm create`, `image build --from --provision` (derive) and `image
// verify`, starts it again, and finds no VMM process of the instance, no
// directory and no row that nothing owns. The moments are random offsets
// within each operation's measured duration; the seed is logged, and
// BANGER_CRASH_SEED=N replays a run.
func TestCrashLeavesNothing(t *testing.T) {
	requireVM(t)
	authHome := t.TempDir()
	in := newInstance(t, fmt.Sprintf("[vm]\nboot_timeout = \"100s\"\negress = \"none\"\n[auth]\nhome = %q\n", authHome))
	defer in.shutdown()
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	base := image.DefaultSpec(cfg.Image.Suite, cfg.Image.Mirror, cfg.Image.SecurityMirror).Name

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BANGER_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BANGER_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay with BANGER_CRASH_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	script := filepath.Join(t.TempDir(), "provision.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nset -e\necho crash-test > /etc/banger-crash\nmkdir -p /root/crash && echo x > /root/crash/marker\nsync\n"), 0o644)
	const derived = "crash-derived"
	ops := []struct {
		name  string
		kills int
		args  func(n int) []string
	}{
		{"vm create", 4, func(n int) []string { return []string{"vm", "create", fmt.Sprintf("crash-%d", n), "--egress", "none"} }},
		{"derive", 3, func(int) []string {
			return []string{"image", "build", "--from", base, "--provision", script, "--name", derived, "--egress", "none"}
		}},
		{"image verify", 3, func(int) []string { return []string{"image", "verify", base} }},
	}
	n := 0
	for _, op := range ops {
		// The whole operation once, uninterrupted: it must work, and its
		// duration bounds the kill moments.
		t0 := time.Now()
		if r := in.run(nil, op.args(n)...); r.code != 0 {
			t.Fatalf("%s: %s\ndaemon log:\n%s", op.name, r, in.daemonLog())
		}
		dur := time.Since(t0)
		n++
		t.Logf("%s takes %s", op.name, dur.Round(100*time.Millisecond))
		cleanInstance(t, in, base)
		checkNothingOrphaned(t, in, op.name+" (uninterrupted)")

		// An operation that ends before its kill moment (a run faster than
		// the measured one) shrinks the window and is tried again, so
		// every kill lands inside an operation.
		kills := 0
		for tries := 0; kills < op.kills && tries < op.kills+3; tries++ {
			at := time.Duration((0.03 + 0.94*rng.Float64()) * float64(dur))
			label := fmt.Sprintf("kill %d: %s at %s of %s", n, op.name, at.Round(10*time.Millisecond), dur.Round(100*time.Millisecond))
			args := op.args(n)
			n++
			done := make(chan result, 1)
			t0 := time.Now()
			go func() { done <- in.runCtx(context.Background(), nil, args...) }()
			var r result
			select {
			case r = <-done:
				dur = time.Since(t0)
				t.Logf("%s: finished first (exit %d) in %s; the window shrinks to that", label, r.code, dur.Round(100*time.Millisecond))
				checkNothingOrphaned(t, in, label+" (finished first)")
				cleanInstance(t, in, base)
				continue
			case <-time.After(at):
			}
			in.killDaemon()
			kills++
			select {
			case r = <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("%s: the CLI did not notice the daemon died", label)
			}
			in.startDaemon()
			t.Logf("%s: CLI exit %d; restart: %s", label, r.code, lastSweep(in))
			checkNothingOrphaned(t, in, label)
			if t.Failed() {
				t.Fatalf("%s left something behind (seed %d)\ndaemon log:\n%s", label, seed, in.daemonLog())
			}
			cleanInstance(t, in, base)
		}
		if kills < op.kills {
			t.Logf("%s: only %d of %d kills landed inside the operation", op.name, kills, op.kills)
		}
	}
	// The base image still boots after all this.
	in.must(t, "image", "verify", base)
}

// lastSweep is the daemon's last "swept leftovers" log line.
func lastSweep(in *instance) string {
	b, _ := os.ReadFile(filepath.Join(in.home, "daemon.log"))
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "swept leftovers") {
			if j := strings.Index(lines[i], "msg="); j >= 0 {
				return lines[i][j:]
			}
			return lines[i]
		}
	}
	return "(no sweep line)"
}

// cleanInstance deletes every VM and every image but base, so the next
// kill starts from the same state.
func cleanInstance(t *testing.T, in *instance, base string) {
	t.Helper()
	var vms []api.VM
	json.Unmarshal([]byte(in.must(t, "vm", "list", "--json").stdout), &vms)
	for _, vm := range vms {
		in.must(t, "vm", "delete", "--force", vm.Name)
	}
	var imgs []api.Image
	json.Unmarshal([]byte(in.must(t, "image", "list", "--json").stdout), &imgs)
	for _, img := range imgs {
		if img.Name != base {
			in.must(t, "image", "delete", img.Name)
		}
	}
}

// checkNothingOrphaned compares what the instance has on the host with
// what its daemon records: every VMM process is the recorded one of a
// running VM, every directory under vms/ and images/ belongs to a row,
// and the cache holds no build directory or bundle. Rows are checked the
// other way: no VM is still creating, and every row's directory exists.
// (A failed operation's record may stay: it is history, not a resource.)
func checkNothingOrphaned(t *testing.T, in *instance, label string) {
	t.Helper()
	var vms []api.VM
	json.Unmarshal([]byte(in.must(t, "vm", "list", "--json").stdout), &vms)
	var imgs []api.Image
	json.Unmarshal([]byte(in.must(t, "image", "list", "--json").stdout), &imgs)
	l := paths.Resolve(func(k string) string {
		if k == paths.EnvHome {
			return in.home
		}
		return ""
	}, 0)

	running := map[string]int{}
	vmDirs := map[string]bool{}
	for _, vm := range vms {
		vmDirs[filepath.Base(vm.Dir)] = true
		if vm.State != api.VMRunning && vm.State != api.VMStopped {
			t.Errorf("%s: VM %s is %q after the restart", label, vm.Name, vm.State)
		}
		if _, err := os.Stat(vm.Dir); err != nil {
			t.Errorf("%s: VM %s has no directory: %v", label, vm.Name, err)
		}
		if vm.State == api.VMRunning {
			running[vm.ID] = vm.PID
		}
	}
	prefix := l.InstancePrefix()
	for _, pid := range instanceProcesses(in.home) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat")); err == nil && bytes.Contains(stat, []byte(") Z ")) {
			continue // exited, waiting to be reaped
		}
		id := ""
		if i := bytes.Index(cmdline, []byte(prefix+"-")); i >= 0 {
			rest := cmdline[i+len(prefix)+1:]
			if j := bytes.IndexAny(rest, ",\x00"); j >= 0 {
				rest = rest[:j]
			}
			id = string(rest)
		}
		if p, ok := running[id]; !ok || p != pid {
			t.Errorf("%s: VMM process %d (VM id %q) is not the recorded VMM of a running VM: %s",
				label, pid, id, strings.ReplaceAll(string(cmdline), "\x00", " "))
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	entries, _ := os.ReadDir(l.VMsDir)
	for _, e := range entries {
		if !vmDirs[e.Name()] {
			t.Errorf("%s: vms/%s belongs to no VM", label, e.Name())
		}
	}
	imgDirs := map[string]bool{}
	for _, img := range imgs {
		imgDirs[filepath.Base(img.Dir)] = true
		if _, err := os.Stat(filepath.Join(img.Dir, image.FileRootfs)); err != nil {
			t.Errorf("%s: image %s has no rootfs: %v", label, img.Name, err)
		}
	}
	entries, _ = os.ReadDir(l.ImagesDir)
	for _, e := range entries {
		if !imgDirs[e.Name()] {
			t.Errorf("%s: images/%s belongs to no image", label, e.Name())
		}
	}
	entries, _ = os.ReadDir(l.CacheDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "build-") || strings.HasSuffix(e.Name(), ".bundle") {
			t.Errorf("%s: cache/%s was left behind", label, e.Name())
		}
	}
}
