package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// TestOrchestratorExample uses banger as a program outside this repository
// would: it builds examples/orchestrator (a module of its own that
// imports only the public api and client packages) with the go command,
// and runs it against the suite's daemon on a small repository. The
// session's output must arrive, the branch the session committed must be
// pulled into the host repository, and the VM must be gone afterwards.
func TestOrchestratorExample(t *testing.T) {
	in := shared(t)
	const vm = "e2e-orch"

	bin := filepath.Join(t.TempDir(), "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(repoRoot, "examples", "orchestrator")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build examples/orchestrator: %v\n%s", err, out)
	}

	repo := t.TempDir()
	newRepo(t, repo)
	write(t, filepath.Join(repo, "README"), "a repository for the orchestrator\n", 0o644)
	git(t, repo, "add", ".")
	git(t, repo, "commit", "-qm", "first")
	hostHead := git(t, repo, "rev-parse", "HEAD")

	// The delete is the program's job; this one only keeps a failed run
	// from leaving a VM behind.
	defer func() {
		if r := in.run(nil, "vm", "show", vm); r.code == 0 {
			in.run(nil, "vm", "delete", vm, "--force")
		}
	}()
	task := `echo "hello from the VM in $(pwd)"
echo "a line on stderr" >&2
git switch -q -c orch/fix
echo fixed > FIX
git add FIX
git commit -qm "fix from the VM"
echo committed`
	runCtx, cancelRun := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancelRun()
	cmd := exec.CommandContext(runCtx, bin, "-socket", in.socket(), "-repo", repo, "-name", vm, "-egress", "none", "-cmd", task)
	cmd.Env = in.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("orchestrator stdout:\n%s\norchestrator stderr:\n%s", stdout.String(), stderr.String())
	if err != nil {
		t.Fatalf("orchestrator: %v\ndaemon log:\n%s", err, in.daemonLog())
	}

	// The session's output, both streams, in the order the command wrote.
	if !strings.Contains(stdout.String(), "hello from the VM in /root/repo\ncommitted\n") {
		t.Fatalf("the session's stdout did not arrive whole: %q", stdout.String())
	}
	if !strings.Contains(stderr.String(), "a line on stderr\n") || !strings.Contains(stderr.String(), "session task exited with 0") {
		t.Fatalf("the session's stderr or exit did not arrive: %q", stderr.String())
	}

	// The branch committed in the VM is in the host repository, as a
	// banger ref; the host's own branch did not move.
	pulled := "refs/remotes/banger/" + vm + "/orch/fix"
	if !strings.Contains(stdout.String(), "pulled refs/heads/orch/fix -> "+pulled) {
		t.Fatalf("the orchestrator did not report the pull of orch/fix: %q", stdout.String())
	}
	if got := git(t, repo, "log", "-1", "--format=%s", pulled); got != "fix from the VM" {
		t.Fatalf("%s is %q, want the VM's commit", pulled, got)
	}
	if got := git(t, repo, "rev-parse", pulled+"~1"); got != hostHead {
		t.Fatalf("the VM's commit has parent %s, want the host's HEAD %s", got, hostHead)
	}
	if got := git(t, repo, "rev-parse", "HEAD"); got != hostHead {
		t.Fatalf("the host's HEAD moved to %s", got)
	}

	// The VM is gone: no record, no VMM process left.
	if r := in.run(nil, "vm", "show", vm); r.code == 0 {
		t.Fatalf("VM %s still exists after the orchestrator: %s", vm, r.stdout)
	}
	var vms []api.VM
	if err := json.Unmarshal([]byte(in.must(t, "vm", "list", "--json").stdout), &vms); err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Name == vm {
			t.Fatalf("vm list still has %s: %+v", vm, v)
		}
	}
	m := regexp.MustCompile(`VM ` + vm + ` \(id ([0-9a-f]+)\)`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("the orchestrator did not print the VM's id: %q", stderr.String())
	}
	if pids := vmProcesses(in.home, m[1]); len(pids) > 0 {
		t.Fatalf("VM %s (%s) left processes %v", vm, m[1], pids)
	}
	if !strings.Contains(stderr.String(), "deleted VM "+vm) {
		t.Fatalf("the orchestrator did not report the delete: %q", stderr.String())
	}
}
