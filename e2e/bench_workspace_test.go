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
// files) next to two baselines on the same VM in the same run:
//
//	(a) git bundle + tar of the same file list, piped over ssh and
//	    unpacked (what a script would do);
//	(b) the same bytes banger sends (bundle + working-tree tar), pushed raw
//	    through the agent channel into /dev/null.
//
// It also prints how prepare time grows from 2,000 to 20,000 files and the
// time of a second prepare after changing one file.
func BenchmarkWorkspacePrepare(b *testing.B) {
	in := shared(b)
	const vm = "bench-ws"
	in.createVM(b, vm, "--disk", "16", "--memory", "2048")
	defer in.run(nil, "vm", "delete", "--force", vm)

	type row struct {
		files                int
		bytes                int64
		banger, ssh, raw     time.Duration
		sentBytes, bundleLen int64
		// floor is GNU tar -x of the working-tree tar from the guest's
		// own disk: creating the files alone, no channel at all.
		floor time.Duration
	}
	var rows []row
	for _, files := range []int{2000, 20000} {
		size := int64(files) * 15000 // 300 MB at 20,000 files
		dir := filepath.Join(b.TempDir(), fmt.Sprintf("repo-%d", files))
		t0 := time.Now()
		genRepo(b, dir, files, size, files/40, files/100)
		b.Logf("generated %d files in %s", files, time.Since(t0).Round(time.Millisecond))
		payload := benchPayload(b, dir)

		r := row{files: files, bytes: size}
		st, _ := os.Stat(payload.bundle)
		r.bundleLen = st.Size()
		tt, _ := os.Stat(payload.tar)
		r.sentBytes = r.bundleLen + tt.Size()
		r.banger = timeIt(b, func() { in.must(b, "vm", "workspace", "prepare", vm, dir, "--force") })
		waitOldTreeGone(b, in, vm)
		r.raw = timeIt(b, func() { pushRaw(b, in, vm, payload) })
		r.ssh = timeIt(b, func() { pushSSH(b, in, vm, payload) })
		r.floor = untarFloor(b, in, vm, payload)
		rows = append(rows, r)

		if files == 20000 {
			write(b, filepath.Join(dir, "d000/f00000.txt"), "one change\n", 0o644)
			second := timeIt(b, func() { in.must(b, "vm", "workspace", "prepare", vm, dir, "--force") })
			waitOldTreeGone(b, in, vm)
			fmt.Printf("\nsecond prepare after changing one file (20,000 files): %s\n", second.Round(time.Millisecond))
			b.ReportMetric(second.Seconds(), "second-prepare-s")
		}
	}
	fmt.Printf("\nworkspace prepare (one run each; bytes = bundle + working-tree tar)\n")
	fmt.Printf("  %6s %9s %9s  %9s %9s %9s  %8s %8s\n", "files", "tree", "sent", "banger", "ssh(a)", "raw(b)", "b/ssh", "b/raw")
	for _, r := range rows {
		fmt.Printf("  %6d %7.0fMB %7.0fMB  %9s %9s %9s  %8.2f %8.2f\n", r.files, float64(r.bytes)/1e6, float64(r.sentBytes)/1e6,
			r.banger.Round(100*time.Millisecond), r.ssh.Round(100*time.Millisecond), r.raw.Round(100*time.Millisecond),
			float64(r.banger)/float64(r.ssh), float64(r.banger)/float64(r.raw))
	}
	fmt.Printf("  targets: banger/ssh <= 0.5, banger/raw <= 1.3\n")
	for _, r := range rows {
		fmt.Printf("  floor at %d files: guest tar -x of the tree from its own disk %s = %.2f of raw(b)\n",
			r.files, r.floor.Round(100*time.Millisecond), float64(r.floor)/float64(r.raw))
	}
	small, big := rows[0], rows[1]
	fmt.Printf("  growth 2,000 -> 20,000 files: %.1fx time for %.0fx files (linear or better: <= 10x)\n",
		float64(big.banger)/float64(small.banger), float64(big.files)/float64(small.files))
	b.ReportMetric(big.banger.Seconds(), "banger-20k-s")
	b.ReportMetric(float64(big.banger)/float64(big.ssh), "ratio-ssh")
	b.ReportMetric(float64(big.banger)/float64(big.raw), "ratio-raw")
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

type payload struct{ dir, bundle, tar, list string }

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
	return p
}

// pushRaw sends the bundle and the tar through the agent channel (vm
// exec's stdin) into /dev/null.
func pushRaw(b testing.TB, in *instance, vm string, p payload) {
	for _, f := range []string{p.bundle, p.tar} {
		fh, err := os.Open(f)
		if err != nil {
			b.Fatal(err)
		}
		r := in.run(fh, "vm", "exec", "-i", vm, "--", "sh", "-c", "cat > /dev/null")
		fh.Close()
		if r.code != 0 {
			b.Fatalf("raw push: %s", r)
		}
	}
}

// untarFloor copies the working-tree tar into the guest (untimed) and
// times GNU tar extracting it there: the cost of creating the files with
// no transfer at all, which bounds how close any prepare can get to the
// raw channel.
func untarFloor(b testing.TB, in *instance, vm string, p payload) time.Duration {
	fh, err := os.Open(p.tar)
	if err != nil {
		b.Fatal(err)
	}
	r := in.run(fh, "vm", "exec", "-i", vm, "--", "sh", "-c", "cat > /root/floor.tar && sync")
	fh.Close()
	if r.code != 0 {
		b.Fatalf("copy tar: %s", r)
	}
	in.must(b, "vm", "exec", vm, "--", "sh", "-c", "rm -rf /root/floor && mkdir /root/floor")
	d := timeIt(b, func() { in.must(b, "vm", "exec", vm, "--", "tar", "-xf", "/root/floor.tar", "-C", "/root/floor") })
	in.must(b, "vm", "exec", vm, "--", "sh", "-c", "rm -rf /root/floor /root/floor.tar")
	return d
}

// pushSSH is baseline (a): the bundle and a tar of the same file list
// piped over ssh, the tar unpacked in the guest.
func pushSSH(b testing.TB, in *instance, vm string, p payload) {
	in.must(b, "vm", "ssh", vm, "--", "rm -rf /root/ssh-base && mkdir -p /root/ssh-base/tree")
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
	in.must(b, "vm", "ssh", vm, "--", "rm -rf /root/ssh-base")
}
