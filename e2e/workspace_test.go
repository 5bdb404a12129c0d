package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// stateScript prints what must be identical between a host repository
// and its guest copy: HEAD, the branch, every ref, git status, the
// identity, and a listing of every file and symlink (content hash and
// executable bit, or link target). It runs under bash on both sides.
const stateScript = `set -e
cd "$1"
echo "HEAD $(git rev-parse HEAD)"
echo "on $(git symbolic-ref -q HEAD || echo detached)"
git for-each-ref --format='%(refname) %(objectname)' refs/heads refs/tags refs/remotes
git status --porcelain=v2 --branch
echo "branch-v:"; git branch -vv --no-color
echo "user $(git config user.name) <$(git config user.email)>"
# What git sees (ignored files never travel), or everything but .git
# for a full copy.
if [ "$2" = all ]; then find . -path ./.git -prune -o \( -type f -o -type l \) -print0
else git ls-files -z --cached --others --exclude-standard | sed -z 's|^|./|'; fi | sort -zu |
while IFS= read -r -d '' f; do
	if [ -L "$f" ]; then printf 'L %s -> %s\n' "$f" "$(readlink "$f")"
	elif [ ! -f "$f" ]; then continue
	else x=-; [ -x "$f" ] && x=x; printf 'F %s %s %s\n' "$x" "$(sha256sum < "$f" | cut -c1-16)" "$f"; fi
done
`

// git runs git in dir on the host and returns its trimmed output.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_DATE=2026-01-02T03:04:05Z", "GIT_COMMITTER_DATE=2026-01-02T03:04:05Z",
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_OPTIONAL_LOCKS=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return strings.TrimSpace(string(out))
}

func write(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func newRepo(t *testing.T, dir string) {
	t.Helper()
	git(t, dir, "init", "-q", "-b", "main")
	git(t, dir, "config", "user.name", "Ada Tester")
	git(t, dir, "config", "user.email", "ada@example.invalid")
}

func hostState(t *testing.T, dir string, all ...bool) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", stateScript, "state", dir, listMode(all))
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "LC_ALL=C", "GIT_OPTIONAL_LOCKS=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("host state of %s: %v", dir, err)
	}
	return string(out)
}

func guestState(t *testing.T, in *instance, vm string, all ...bool) string {
	t.Helper()
	r := in.must(t, "vm", "exec", vm, "--", "env", "LC_ALL=C", "bash", "-c", stateScript, "state", "/root/repo", listMode(all))
	return r.stdout
}

func listMode(all []bool) string {
	if len(all) > 0 && all[0] {
		return "all"
	}
	return "git"
}

// sameState prepares dir into vm and compares both sides.
func sameState(t *testing.T, in *instance, vm, dir string, flags ...string) api.Workspace {
	t.Helper()
	args := append([]string{"vm", "workspace", "prepare", vm, dir, "--json"}, flags...)
	r := in.must(t, args...)
	var ws api.Workspace
	if err := json.Unmarshal([]byte(r.stdout), &ws); err != nil {
		t.Fatalf("parse prepare output: %v\n%s", err, r.stdout)
	}
	full := strings.Contains(strings.Join(flags, " "), "full_copy")
	host, guest := hostState(t, dir, full), guestState(t, in, vm, full)
	if host != guest {
		t.Fatalf("guest differs from host\n--- host\n%s\n--- guest\n%s", host, guest)
	}
	return ws
}

// mixedRepo is a clone with an upstream and every kind of local change.
func mixedRepo(t *testing.T) string {
	base := t.TempDir()
	origin := filepath.Join(base, "origin")
	os.MkdirAll(origin, 0o755)
	newRepo(t, origin)
	write(t, filepath.Join(origin, "README.md"), "# demo\n", 0o644)
	git(t, origin, "add", ".")
	git(t, origin, "commit", "-qm", "initial")

	dir := filepath.Join(base, "work")
	git(t, base, "clone", "-q", origin, dir)
	git(t, dir, "config", "user.name", "Ada Tester")
	git(t, dir, "config", "user.email", "ada@example.invalid")
	files := map[string]string{
		"src/main.go":         "package main\n\nfunc main() {}\n",
		"src/util.go":         "package main\n// util\n",
		"to-delete.txt":       "bye\n",
		"to-rename.txt":       "rename me\n",
		"partial.txt":         "one\ntwo\nthree\n",
		"with space.txt":      "spaces\n",
		"ünïcödé-名前.txt":      "unicode\n",
		"new\nline.txt":       "newline in name\n",
		"empty":               "",
		"docs/deep/nested.md": "deep\n",
		"later-exec.sh":       "echo later\n",
	}
	for name, content := range files {
		write(t, filepath.Join(dir, name), content, 0o644)
	}
	write(t, filepath.Join(dir, "run.sh"), "#!/bin/sh\necho run\n", 0o755)
	write(t, filepath.Join(dir, ".gitignore"), "*.log\nbuild/\n", 0o644)
	if err := os.Symlink("src/main.go", filepath.Join(dir, "link-to-main")); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-qm", "add files")
	git(t, dir, "tag", "-a", "v1.0", "-m", "release one")
	git(t, dir, "branch", "feature")
	write(t, filepath.Join(dir, "src/main.go"), "package main\n\nfunc main() { println(1) }\n", 0o644)
	git(t, dir, "commit", "-qam", "second")

	// Now the local, uncommitted state.
	write(t, filepath.Join(dir, "src/util.go"), "package main\n// util, edited\n", 0o644) // modified, unstaged
	write(t, filepath.Join(dir, "README.md"), "# demo\n\nstaged edit\n", 0o644)           // staged
	git(t, dir, "add", "README.md")
	write(t, filepath.Join(dir, "partial.txt"), "ONE\ntwo\nthree\n", 0o644) // partially staged
	git(t, dir, "add", "partial.txt")
	write(t, filepath.Join(dir, "partial.txt"), "ONE\ntwo\nTHREE\n", 0o644)
	os.Remove(filepath.Join(dir, "to-delete.txt")) // deleted, unstaged
	git(t, dir, "mv", "to-rename.txt", "renamed.txt")
	os.Chmod(filepath.Join(dir, "later-exec.sh"), 0o755) // mode change
	write(t, filepath.Join(dir, "untracked.txt"), "new file\n", 0o644)
	write(t, filepath.Join(dir, "untracked dir/inner.txt"), "inner\n", 0o644)
	write(t, filepath.Join(dir, "intent.txt"), "intent to add\n", 0o644)
	git(t, dir, "add", "-N", "intent.txt")
	write(t, filepath.Join(dir, "debug.log"), "ignored\n", 0o644)
	write(t, filepath.Join(dir, "build/out.bin"), "ignored too\n", 0o644)
	if err := os.Symlink("/etc/hostname", filepath.Join(dir, "outside-link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hostSnapshot is what a prepare and a pull must not change in the host
// repository (pull may add refs under banger namespaces only).
func hostSnapshot(t *testing.T, dir string) string {
	t.Helper()
	idx, err := os.ReadFile(filepath.Join(dir, ".git", "index"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, ".git", "config"))
	all := git(t, dir, "for-each-ref", "--format=%(refname) %(objectname)") + "\n" +
		fmt.Sprintf("index %x\n", sha256.Sum256(idx)) + string(cfg) + hostState(t, dir)
	var kept []string
	for _, l := range strings.Split(all, "\n") {
		if !strings.HasPrefix(l, "refs/remotes/banger/") && !strings.HasPrefix(l, "refs/banger/") {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}

// TestWorkspace prepares repositories of every shape into one VM and
// checks that the guest sees exactly what the host has, then pulls a
// guest commit back.
func TestWorkspace(t *testing.T) {
	in := shared(t)
	const vm = "e2e-ws"
	mixed := mixedRepo(t)
	before := hostSnapshot(t, mixed)

	// vm run: resolve, create, prepare, and the next steps as data.
	r := in.run(nil, "vm", "run", mixed, "--name", vm, "--egress", "none", "--json")
	defer in.run(nil, "vm", "delete", vm, "--force")
	if r.code != 0 {
		t.Fatalf("vm run: %s\ndaemon log:\n%s", r, in.daemonLog())
	}
	var run struct {
		VM        api.VM                           `json:"vm"`
		Workspace api.Workspace                    `json:"workspace"`
		NextSteps []struct{ What, Command string } `json:"next_steps"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &run); err != nil {
		t.Fatalf("parse vm run output: %v\n%s", err, r.stdout)
	}
	steps := fmt.Sprint(run.NextSteps)
	if run.VM.Name != vm || run.Workspace.Source != mixed || !strings.Contains(steps, "banger vm ssh "+vm) ||
		!strings.Contains(steps, "banger vm workspace pull "+vm) || strings.Contains(steps, "opencode attach") {
		// The base image serves no opencode, so no attach step
		// (TestAgentImage checks the step where opencode runs).
		t.Fatalf("vm run --json = %s", r.stdout)
	}

	t.Run("modified staged untracked ignored deleted renamed exec symlink odd names", func(t *testing.T) {
		if host, guest := hostState(t, mixed), guestState(t, in, vm); host != guest {
			t.Fatalf("guest differs from host after vm run\n--- host\n%s\n--- guest\n%s", host, guest)
		}
		ws := sameState(t, in, vm, mixed)
		if ws.Mode != "bundle" || ws.Branch != "main" || ws.Head != git(t, mixed, "rev-parse", "HEAD") {
			t.Fatalf("workspace record = %+v", ws)
		}
		if ws.Base != git(t, mixed, "merge-base", "HEAD", "origin/main") {
			t.Fatalf("base = %s, want the merge-base with origin/main", ws.Base)
		}
		for _, f := range []string{"debug.log", "build/out.bin"} {
			if r := in.run(nil, "vm", "exec", vm, "--", "test", "-e", "/root/repo/"+f); r.code == 0 {
				t.Fatalf("ignored file %s reached the guest", f)
			}
		}
		r := in.must(t, "vm", "exec", vm, "--", "readlink", "/root/repo/outside-link")
		if strings.TrimSpace(r.stdout) != "/etc/hostname" {
			t.Fatalf("outside-link is not the same symlink: %q", r.stdout)
		}
		if after := hostSnapshot(t, mixed); after != before {
			t.Fatalf("prepare changed the host repository\n--- before\n%s\n--- after\n%s", before, after)
		}
		show := in.vm(t, vm)
		if show.Workspace == nil || show.Workspace.Source != mixed {
			t.Fatalf("vm show lacks the workspace: %+v", show.Workspace)
		}
	})

	t.Run("detached HEAD", func(t *testing.T) {
		dir := t.TempDir()
		newRepo(t, dir)
		write(t, filepath.Join(dir, "a.txt"), "a\n", 0o644)
		git(t, dir, "add", ".")
		git(t, dir, "commit", "-qm", "one")
		write(t, filepath.Join(dir, "a.txt"), "b\n", 0o644)
		git(t, dir, "commit", "-qam", "two")
		git(t, dir, "checkout", "-q", "--detach", "HEAD~1")
		write(t, filepath.Join(dir, "a.txt"), "local\n", 0o644)
		ws := sameState(t, in, vm, dir)
		if ws.Branch != "" {
			t.Fatalf("branch = %q, want detached", ws.Branch)
		}
	})

	t.Run("branch from and pull", func(t *testing.T) {
		featureSHA := git(t, mixed, "rev-parse", "feature")
		before := hostSnapshot(t, mixed)
		in.must(t, "vm", "workspace", "prepare", vm, mixed, "--branch", "agent/work", "--from", "feature", "--force")
		g := in.must(t, "vm", "exec", "-w", "/root/repo", vm, "--", "sh", "-c", "git symbolic-ref HEAD; git rev-parse HEAD")
		if want := "refs/heads/agent/work\n" + featureSHA + "\n"; g.stdout != want {
			t.Fatalf("guest HEAD = %q, want %q", g.stdout, want)
		}
		if after := hostSnapshot(t, mixed); after != before {
			t.Fatalf("--branch changed the host repository\n--- before\n%s\n--- after\n%s", before, after)
		}
		// Work in the guest, then bring it back.
		in.must(t, "vm", "exec", "-w", "/root/repo", vm, "--", "sh", "-c",
			"git reset -q --hard && echo agent > agent.txt && git add agent.txt && git commit -qm 'agent work' && git tag agent-tag")
		guestSHA := strings.TrimSpace(in.must(t, "vm", "exec", "-w", "/root/repo", vm, "--", "git", "rev-parse", "HEAD").stdout)
		pull := in.must(t, "vm", "workspace", "pull", vm, "--json")
		var res api.PullResult
		if err := json.Unmarshal([]byte(pull.stdout), &res); err != nil {
			t.Fatal(err)
		}
		if got := git(t, mixed, "rev-parse", "refs/remotes/banger/"+vm+"/agent/work"); got != guestSHA {
			t.Fatalf("pulled ref = %s, want %s\n%s", got, guestSHA, pull.stdout)
		}
		if got := git(t, mixed, "log", "-1", "--format=%s", "refs/banger/"+vm+"/tags/agent-tag"); got != "agent work" {
			t.Fatalf("pulled tag points at %q", got)
		}
		if after := hostSnapshot(t, mixed); after != before {
			t.Fatalf("pull changed more than banger refs\n--- before\n%s\n--- after\n%s", before, after)
		}
		// Plain output says what arrived and how to use it; a second
		// pull has nothing new.
		again := in.must(t, "vm", "workspace", "pull", vm)
		if !strings.Contains(again.stdout, "nothing new") {
			t.Fatalf("second pull: %s", again)
		}
	})

	t.Run("refusals keep the previous workspace", func(t *testing.T) {
		want := guestState(t, in, vm)
		bare := filepath.Join(t.TempDir(), "bare.git")
		git(t, filepath.Dir(bare), "init", "-q", "--bare", bare)
		plain := t.TempDir()
		sub := submoduleRepo(t)
		cases := []struct {
			name string
			args []string
			msg  string
		}{
			{"bare", []string{bare}, "bare"},
			{"not a repository", []string{plain}, "not inside a git repository"},
			{"from without branch", []string{mixed, "--from", "feature"}, "--from requires --branch"},
			{"submodule in bundle mode", []string{sub}, "--mode full_copy"},
			{"unknown from", []string{mixed, "--branch", "x", "--from", "no-such-ref"}, "no-such-ref"},
			{"bad mode", []string{mixed, "--mode", "rsync"}, "unknown workspace mode"},
		}
		for _, c := range cases {
			r := in.run(nil, append([]string{"vm", "workspace", "prepare", vm}, c.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, c.msg) || !strings.Contains(r.stderr, "hint:") {
				t.Errorf("%s: want a failure mentioning %q with a hint, got %s", c.name, c.msg, r)
			}
		}
		// A process working inside /root/repo blocks a replace.
		done := make(chan result, 1)
		go func() { done <- in.run(nil, "vm", "exec", "-w", "/root/repo", vm, "--", "sleep", "20") }()
		deadline := time.Now().Add(15 * time.Second)
		for {
			r := in.run(nil, "vm", "exec", vm, "--", "pgrep", "-x", "sleep")
			if r.code == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		r := in.run(nil, "vm", "workspace", "prepare", vm, mixed)
		if r.code == 0 || !strings.Contains(r.stderr, "sleep") || !strings.Contains(r.stderr, "--force") {
			t.Errorf("busy workspace: want a refusal naming the process and --force, got %s", r)
		}
		in.run(nil, "vm", "exec", vm, "--", "pkill", "-x", "sleep")
		<-done
		if got := guestState(t, in, vm); got != want {
			t.Fatalf("a refused prepare changed the workspace\n--- before\n%s\n--- after\n%s", want, got)
		}
	})

	t.Run("full copy with a submodule", func(t *testing.T) {
		dir := submoduleRepo(t)
		write(t, filepath.Join(dir, "sub", "local.txt"), "edit inside the submodule\n", 0o644)
		ws := sameState(t, in, vm, dir, "--mode", "full_copy")
		if ws.Mode != "full_copy" {
			t.Fatalf("mode = %s", ws.Mode)
		}
		r := in.must(t, "vm", "exec", "-w", "/root/repo", vm, "--", "git", "submodule", "status")
		if want := git(t, dir, "submodule", "status"); strings.TrimSpace(r.stdout) != want {
			t.Fatalf("submodule status: guest %q, host %q", r.stdout, want)
		}
	})
}

func submoduleRepo(t *testing.T) string {
	base := t.TempDir()
	lib := filepath.Join(base, "lib")
	os.MkdirAll(lib, 0o755)
	newRepo(t, lib)
	write(t, filepath.Join(lib, "lib.txt"), "library\n", 0o644)
	git(t, lib, "add", ".")
	git(t, lib, "commit", "-qm", "lib")
	dir := filepath.Join(base, "app")
	os.MkdirAll(dir, 0o755)
	newRepo(t, dir)
	write(t, filepath.Join(dir, "app.txt"), "app\n", 0o644)
	git(t, dir, "add", ".")
	git(t, dir, "commit", "-qm", "app")
	git(t, dir, "-c", "protocol.file.allow=always", "submodule", "add", "-q", lib, "sub")
	git(t, dir, "commit", "-qm", "add submodule")
	return dir
}
