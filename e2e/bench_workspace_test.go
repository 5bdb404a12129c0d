package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkWorkspacePrepare: `banger vm workspace prepare` of a generated
// repository (20,000 files, 300 MB, 500 modified and 200 untracked
// files; and the same at 2,000) next to baselines on the same VM in the
// same run, alternated over BENCH_WS_RUNS runs (default 3), medians:
//
//	(a) ssh: git bundle + tar of the same file list piped over `vm ssh`
//	    and unpacked (what a script would do);
//	(b) raw port: the same bytes (bundle + working-tree tar) pushed
//	    through the raw virtio-serial port into /dev/null, nothing of
//	    banger on the path;
//	(c) pipe floor: the same bytes through a pipe inside the guest;
//	(d) file floor: the same tree created in the guest from local tars by
//	    two parallel `tar -x` (banger extracts with max(2, CPUs) writers).
//
// Every side is timed the same way: from the command's start to its end,
// connection setup included, the previous tree's removal excluded (banger
// removes the replaced tree after answering; the benchmark waits for
// that, and removes the baselines' trees, outside the timing). (c) and (d)
// are by the guest's clock. (d) creates the files only: no clone, no
// index, so it is a floor under that part of a prepare, not under all of
// it. It also prints the bytes banger sent and the time of a second
// prepare after changing one file.
func BenchmarkWorkspacePrepare(b *testing.B) {
	in := benchShared(b)
	const vm = "bench-ws"
	info := in.createVM(b, vm, "--disk", "16", "--memory", "2048")
	defer in.run(nil, "vm", "delete", "--force", vm)
	runs := envInt("BENCH_WS_RUNS", 3)

	type row struct {
		files                         int
		bytes                         int64
		payloadBytes, sentBytes       int64
		banger, ssh, raw, pipe, floor time.Duration
	}
	var rows []row
	for _, files := range []int{2000, 20000} {
		size := int64(files) * 15000 // 300 MB at 20,000 files
		dir := filepath.Join(b.TempDir(), fmt.Sprintf("repo-%d", files))
		t0 := time.Now()
		genRepo(b, dir, files, size, files/40, files/100)
		b.Logf("generated %d files in %s", files, time.Since(t0).Round(time.Millisecond))
		payload := benchPayload(b, dir)
		copyPayload(b, in, vm, payload)

		r := row{files: files, bytes: size}
		for _, f := range []string{payload.bundle, payload.tar} {
			st, _ := os.Stat(f)
			r.payloadBytes += st.Size()
		}
		var bangerT, sshT, rawT, pipeT, floorT []time.Duration
		for i := 0; i < runs; i++ {
			bangerT = append(bangerT, timeIt(b, func() { in.must(b, "vm", "workspace", "prepare", vm, dir, "--force") }))
			waitOldTreeGone(b, in, vm)
			sshT = append(sshT, pushSSH(b, in, vm, payload))
			rawT = append(rawT, rawPortPush(b, in, info, payload.bundle, payload.tar))
			pipeT = append(pipeT, guestTimed(b, in, vm, "cat /root/bench-payload/* | cat > /dev/null"))
			floorT = append(floorT, fileFloor(b, in, vm))
		}
		ws := in.vm(b, vm).Workspace
		if ws != nil {
			r.sentBytes = ws.Bytes + ws.BundleBytes
		}
		r.banger, r.ssh, r.raw, r.pipe, r.floor = median(bangerT), median(sshT), median(rawT), median(pipeT), median(floorT)
		b.Logf("%d files: banger %v ssh %v raw %v pipe %v floor %v", files, bangerT, sshT, rawT, pipeT, floorT)
		rows = append(rows, r)
		in.must(b, "vm", "exec", vm, "--", "rm", "-rf", "/root/bench-payload")

		if files == 20000 {
			write(b, filepath.Join(dir, "d000/f00000.txt"), "one change\n", 0o644)
			second := timeIt(b, func() { in.must(b, "vm", "workspace", "prepare", vm, dir, "--force") })
			waitOldTreeGone(b, in, vm)
			fmt.Printf("\nsecond prepare after changing one file (20,000 files): %s\n", second.Round(time.Millisecond))
			b.ReportMetric(second.Seconds(), "second-prepare-s")
		}
	}
	fmt.Printf("\nworkspace prepare (median of %d, alternated; sent = bytes banger sent, payload = bundle + tar the baselines move)\n", runs)
	fmt.Printf("  %6s %7s %7s %7s  %8s %8s %8s %8s %8s  %6s %6s %6s %6s\n", "files", "tree", "sent", "payload",
		"banger", "ssh(a)", "raw(b)", "pipe(c)", "files(d)", "/ssh", "/raw", "/pipe", "/files")
	for _, r := range rows {
		d := func(x time.Duration) string { return x.Round(100 * time.Millisecond).String() }
		q := func(x time.Duration) float64 { return float64(r.banger) / float64(x) }
		fmt.Printf("  %6d %5.0fMB %5.0fMB %5.0fMB  %8s %8s %8s %8s %8s  %6.2f %6.2f %6.2f %6.2f\n", r.files,
			float64(r.bytes)/1e6, float64(r.sentBytes)/1e6, float64(r.payloadBytes)/1e6,
			d(r.banger), d(r.ssh), d(r.raw), d(r.pipe), d(r.floor), q(r.ssh), q(r.raw), q(r.pipe), q(r.floor))
	}
	small, big := rows[0], rows[1]
	toSSH, toRaw := float64(big.banger)/float64(big.ssh), float64(big.banger)/float64(big.raw)
	growth := float64(big.banger) / float64(small.banger)
	target(b, "prepare 20k banger/ssh", fmt.Sprintf("%.2f", toSSH), "<= 0.5", toSSH <= 0.5)
	target(b, "prepare 20k banger/raw port", fmt.Sprintf("%.2f", toRaw), "<= 1.3", toRaw <= 1.3)
	target(b, "prepare growth 2k->20k files", fmt.Sprintf("%.1fx", growth), "<= 10x", growth <= 10)
	b.ReportMetric(big.banger.Seconds(), "banger-20k-s")
	b.ReportMetric(toSSH, "ratio-ssh")
	b.ReportMetric(toRaw, "ratio-raw")
}

// copyPayload puts the bundle and the two halves of the tree's tar in the
// guest's /root/bench-payload (untimed), for the pipe and file floors.
func copyPayload(b testing.TB, in *instance, vm string, p payload) {
	in.must(b, "vm", "exec", vm, "--", "sh", "-c", "rm -rf /root/bench-payload && mkdir /root/bench-payload")
	for name, f := range map[string]string{"repo.bundle": p.bundle, "half0.tar": p.halves[0], "half1.tar": p.halves[1]} {
		fh, err := os.Open(f)
		if err != nil {
			b.Fatal(err)
		}
		r := in.run(fh, "vm", "exec", "-i", vm, "--", "sh", "-c", "cat > /root/bench-payload/"+name)
		fh.Close()
		if r.code != 0 {
			b.Fatalf("copy %s: %s", name, r)
		}
	}
	in.must(b, "vm", "exec", vm, "--", "sync")
}

// fileFloor times creating the tree in the guest from the local halves
// with two parallel tar -x, by the guest's clock; the tree is removed
// afterwards, untimed.
func fileFloor(b testing.TB, in *instance, vm string) time.Duration {
	in.must(b, "vm", "exec", vm, "--", "sh", "-c", "rm -rf /root/floor && mkdir /root/floor")
	d := guestTimed(b, in, vm, "tar -xf /root/bench-payload/half0.tar -C /root/floor & tar -xf /root/bench-payload/half1.tar -C /root/floor & wait")
	in.must(b, "vm", "exec", vm, "--", "rm", "-rf", "/root/floor")
	return d
}

// waitOldTreeGone waits until the agent has deleted the workspace a
// prepare replaced (it does so after answering), so the baselines run on
// a quiet guest.
func waitOldTreeGone(b testing.TB, in *instance, vm string) {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		r := in.run(nil, "vm", "exec", vm, "--", "sh", "-c", "ls -d /root/.banger-prepare-* 2>/dev/null")
		if r.code != 0 || strings.TrimSpace(r.stdout) == "" {
			return
		}
		time.Sleep(time.Second)
	}
	b.Fatal("the replaced workspace was not deleted within 5 minutes")
}

func timeIt(b testing.TB, f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}

// genRepo writes a repository of n files totalling about size bytes of
// source-like text (compressible like code), commits it, then modifies
// `modified` files and adds `untracked` new ones.
func genRepo(b testing.TB, dir string, n int, size int64, modified, untracked int) {
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	words := strings.Fields(`func return if else for range var const type struct interface map
		string int error nil true false package import defer go select case switch break
		continue append len make new ctx err result value index count buffer reader writer`)
	text := func(sz int) []byte {
		var sb strings.Builder
		for sb.Len() < sz {
			for range 8 {
				sb.WriteString(words[rng.IntN(len(words))])
				sb.WriteByte(' ')
			}
			fmt.Fprintf(&sb, "%x\n", rng.Uint64())
		}
		return []byte(sb.String()[:sz])
	}
	per := int(size / int64(n))
	name := func(i int) string { return fmt.Sprintf("d%03d/f%05d.txt", i/100, i) }
	for i := range n {
		p := filepath.Join(dir, name(i))
		if i%100 == 0 {
			os.MkdirAll(filepath.Dir(p), 0o755)
		}
		sz := per/2 + rng.IntN(per)
		if err := os.WriteFile(p, text(sz), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"}, {"config", "user.name", "Bench"}, {"config", "user.email", "bench@example.invalid"},
		{"add", "-A"}, {"commit", "-qm", "generated"},
	} {
		benchGit(b, dir, args...)
	}
	for i := range modified {
		p := filepath.Join(dir, name(i*(n/modified)))
		f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		f.Write(text(200))
		f.Close()
	}
	for i := range untracked {
		p := filepath.Join(dir, "new", fmt.Sprintf("u%04d.txt", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, text(per), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

func benchGit(b testing.TB, dir string, args ...string) string {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

type payload struct {
	dir, bundle, tar, list string
	// halves split the tree's tar in two by alternate files, for the
	// parallel file floor.
	halves [2]string
}

// benchPayload writes, outside the repository, a bundle of every ref and
// a tar of the file list banger sends (tracked + untracked, not ignored).
func benchPayload(b testing.TB, dir string) payload {
	tmp := b.TempDir()
	p := payload{dir: dir, bundle: filepath.Join(tmp, "repo.bundle"), tar: filepath.Join(tmp, "tree.tar"), list: filepath.Join(tmp, "list")}
	benchGit(b, dir, "bundle", "create", "-q", p.bundle, "--all")
	list := benchGit(b, dir, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	if err := os.WriteFile(p.list, []byte(list), 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", dir, "--null", "-T", p.list, "-cf", p.tar).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v\n%s", err, out)
	}
	var lists [2][]string
	for i, name := range strings.Split(strings.TrimSuffix(list, "\x00"), "\x00") {
		lists[i%2] = append(lists[i%2], name)
	}
	for i := range p.halves {
		l := filepath.Join(tmp, fmt.Sprintf("list%d", i))
		p.halves[i] = filepath.Join(tmp, fmt.Sprintf("half%d.tar", i))
		if err := os.WriteFile(l, []byte(strings.Join(lists[i], "\x00")+"\x00"), 0o644); err != nil {
			b.Fatal(err)
		}
		if out, err := exec.Command("tar", "-C", dir, "--null", "-T", l, "-cf", p.halves[i]).CombinedOutput(); err != nil {
			b.Fatalf("tar half: %v\n%s", err, out)
		}
	}
	return p
}

// pushSSH is baseline (a): the bundle and a tar of the same file list
// piped over ssh, the tar unpacked in the guest. The directory is made
// before and removed after, outside the timing.
func pushSSH(b testing.TB, in *instance, vm string, p payload) time.Duration {
	in.must(b, "vm", "ssh", vm, "--", "rm -rf /root/ssh-base && mkdir -p /root/ssh-base/tree")
	t0 := time.Now()
	fh, err := os.Open(p.bundle)
	if err != nil {
		b.Fatal(err)
	}
	r := in.run(fh, "vm", "ssh", vm, "--", "cat > /root/ssh-base/repo.bundle")
	fh.Close()
	if r.code != 0 {
		b.Fatalf("ssh bundle: %s", r)
	}
	tarCmd := exec.Command("tar", "-C", p.dir, "--null", "-T", p.list, "-cf", "-")
	ssh := exec.Command(bangerBin, "vm", "ssh", vm, "--", "tar -xf - -C /root/ssh-base/tree")
	ssh.Env = in.env()
	pipe, err := tarCmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	ssh.Stdin = pipe
	if err := tarCmd.Start(); err != nil {
		b.Fatal(err)
	}
	if out, err := ssh.CombinedOutput(); err != nil {
		b.Fatalf("ssh tar: %v\n%s", err, out)
	}
	if err := tarCmd.Wait(); err != nil {
		b.Fatal(err)
	}
	d := time.Since(t0)
	in.must(b, "vm", "ssh", vm, "--", "rm -rf /root/ssh-base")
	return d
}
