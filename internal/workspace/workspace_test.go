package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// TestWorkspaceRoundTrip prepares a host repository in many states and
// checks that the simulated guest sees the same thing through git (status
// with the index hashes, HEAD, branches, tags, log, refs, index entries,
// identity) and has the same files, byte for byte and with the same
// executable bits and symlink targets. simulateGuest also checks that the
// host repository did not change at all.
func TestWorkspaceRoundTrip(t *testing.T) {
	t.Parallel()
	outside := t.TempDir()
	secret := "top secret outside the repository\n"
	writeFile(t, filepath.Join(outside, "secret.txt"), secret, 0o644)

	tests := []struct {
		name string
		// initArgs go to git init.
		initArgs []string
		setup    func(t *testing.T, dir string)
		// notCopied exist on the host and must not reach the guest.
		notCopied []string
		check     func(t *testing.T, dir string, res guestResult)
	}{
		{name: "clean"},
		{
			name: "modified",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "src/main.go"), "package main\n\nfunc main() { println(1) }\n", 0o644)
			},
		},
		{
			name: "staged",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "src/util.go"), "package main\n\nfunc util() int { return 1 }\n", 0o644)
				git(t, dir, "add", "src/util.go")
			},
		},
		{
			name: "partially staged",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "docs/a.txt"), "line 1 staged\nline 2\nline 3\n", 0o644)
				git(t, dir, "add", "docs/a.txt")
				writeFile(t, filepath.Join(dir, "docs/a.txt"), "line 1 staged\nline 2\nline 3 unstaged\n", 0o644)
				// A new file staged in one version and edited again.
				writeFile(t, filepath.Join(dir, "new.txt"), "staged\n", 0o644)
				git(t, dir, "add", "new.txt")
				writeFile(t, filepath.Join(dir, "new.txt"), "staged\nand not\n", 0o644)
			},
			check: func(t *testing.T, dir string, res guestResult) {
				// The staged blob exists in no commit: it came with the
				// index commit, and the guest index holds it.
				staged := git(t, dir, "rev-parse", ":docs/a.txt")
				if got := git(t, res.dir, "cat-file", "-p", strings.TrimSpace(staged)); got != "line 1 staged\nline 2\nline 3\n" {
					t.Fatalf("guest staged blob = %q", got)
				}
			},
		},
		{
			name: "untracked",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "notes.txt"), "todo\n", 0o644)
				writeFile(t, filepath.Join(dir, "newdir/deep/file.txt"), "deep\n", 0o644)
			},
		},
		{
			name: "ignored",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, ".gitignore"), "*.log\nbuild/\n", 0o644)
				git(t, dir, "add", ".gitignore")
				git(t, dir, "commit", "-q", "-m", "ignore")
				writeFile(t, filepath.Join(dir, "app.log"), "log\n", 0o644)
				writeFile(t, filepath.Join(dir, "build/out.bin"), "binary\n", 0o755)
				writeFile(t, filepath.Join(dir, "src/debug.log"), "log\n", 0o644)
				// Ignored through .git/info/exclude and core.excludesFile.
				writeFile(t, filepath.Join(dir, ".git/info/exclude"), "secret.env\n", 0o644)
				writeFile(t, filepath.Join(dir, "secret.env"), "TOKEN=1\n", 0o600)
				writeFile(t, filepath.Join(outside, "excludes"), "*.tmp\n", 0o644)
				git(t, dir, "config", "core.excludesFile", filepath.Join(outside, "excludes"))
				writeFile(t, filepath.Join(dir, "scratch.tmp"), "tmp\n", 0o644)
				// Tracked despite matching a pattern: it travels.
				writeFile(t, filepath.Join(dir, "keep.log"), "kept\n", 0o644)
				git(t, dir, "add", "-f", "keep.log")
			},
			notCopied: []string{"app.log", "build/out.bin", "src/debug.log", "secret.env", "scratch.tmp"},
			check: func(t *testing.T, dir string, res guestResult) {
				for _, s := range []string{"TOKEN=1", "binary\n"} {
					if bytes.Contains(res.overlay, []byte(s)) {
						t.Fatalf("the overlay carries ignored content %q", s)
					}
				}
			},
		},
		{
			name: "deleted",
			setup: func(t *testing.T, dir string) {
				os.Remove(filepath.Join(dir, "docs/a.txt")) // unstaged, and its directory goes with it
				git(t, dir, "rm", "-q", "src/util.go")      // staged
				// A tracked file replaced by a directory.
				os.Remove(filepath.Join(dir, "script.sh"))
				writeFile(t, filepath.Join(dir, "script.sh/inner"), "now a dir\n", 0o644)
			},
			check: func(t *testing.T, dir string, res guestResult) {
				want := PathList{"docs/a.txt", "script.sh"}
				if !slices.Equal(res.plan.Deleted, want) {
					t.Fatalf("plan.Deleted = %q, want %q", res.plan.Deleted, want)
				}
			},
		},
		{
			name: "renamed",
			setup: func(t *testing.T, dir string) {
				git(t, dir, "mv", "README.md", "README.txt")
				os.Rename(filepath.Join(dir, "src/main.go"), filepath.Join(dir, "src/app.go"))
			},
		},
		{
			name: "executable",
			setup: func(t *testing.T, dir string) {
				os.Chmod(filepath.Join(dir, "docs/a.txt"), 0o755) // unstaged mode change
				writeFile(t, filepath.Join(dir, "tool.sh"), "#!/bin/sh\n", 0o755)
				git(t, dir, "add", "tool.sh")
				// Mode change staged, worktree changed back.
				git(t, dir, "update-index", "--chmod=-x", "script.sh")
				writeFile(t, filepath.Join(dir, "untracked.sh"), "#!/bin/sh\n", 0o700)
			},
		},
		{
			name: "symlinks",
			setup: func(t *testing.T, dir string) {
				must(t, os.Symlink("src/main.go", filepath.Join(dir, "link-in")))
				must(t, os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(dir, "link-out")))
				must(t, os.Symlink("../../secret.txt", filepath.Join(dir, "link-up")))
				must(t, os.Symlink("missing", filepath.Join(dir, "dangling")))
				must(t, os.Symlink("src", filepath.Join(dir, "link-dir")))
				git(t, dir, "add", "link-in", "link-out", "link-dir")
				// A tracked file whose directory became a symlink: git
				// sees it deleted, and so must the overlay.
				git(t, dir, "mv", "docs", "realdocs")
				git(t, dir, "commit", "-q", "-m", "move docs")
				must(t, os.Rename(filepath.Join(dir, "realdocs"), filepath.Join(dir, "elsewhere")))
				must(t, os.Symlink("elsewhere", filepath.Join(dir, "realdocs")))
				// A symlink to a directory outside the repository.
				must(t, os.Symlink(outside, filepath.Join(dir, "outside-dir")))
			},
			check: func(t *testing.T, dir string, res guestResult) {
				if bytes.Contains(res.overlay, []byte(secret)) {
					t.Fatal("the overlay followed a symlink out of the repository")
				}
				if target, err := os.Readlink(filepath.Join(res.dir, "link-out")); err != nil || target != filepath.Join(outside, "secret.txt") {
					t.Fatalf("guest link-out = %q, %v", target, err)
				}
				if !slices.Contains(res.plan.Deleted, "realdocs/a.txt") {
					t.Fatalf("a file below a symlinked directory is not deleted: %q", res.plan.Deleted)
				}
			},
		},
		{
			name: "odd names",
			setup: func(t *testing.T, dir string) {
				names := []string{
					"with space.txt", "ünïcödé/文件.txt", "new\nline.txt", "tab\there", "back\\slash",
					"-rf", "star*and?[brackets]", ":(top)magic", "\"quoted\"", "latin1-\xe9\xff",
					strings.Repeat("long-", 30) + "name.txt",
					strings.Repeat("deep/", 40) + "file",
				}
				for i, n := range names {
					writeFile(t, filepath.Join(dir, n), "content "+n+"\n", 0o644)
					if i%2 == 0 {
						git(t, dir, "add", "--", n)
					}
				}
				// Pathspec magic in an intent-to-add name must stay literal
				// in the guest's git add -N.
				writeFile(t, filepath.Join(dir, "ita*[x]?"), "ita\n", 0o644)
				writeFile(t, filepath.Join(dir, "ita-x-"), "decoy\n", 0o644)
				git(t, dir, "add", "-N", "--", "ita*[x]?")
			},
			check: func(t *testing.T, dir string, res guestResult) {
				if !slices.Equal(res.plan.IntentToAdd, PathList{"ita*[x]?"}) {
					t.Fatalf("intent-to-add = %q", res.plan.IntentToAdd)
				}
			},
		},
		{
			name: "empty files",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "empty-tracked"), "", 0o644)
				git(t, dir, "add", "empty-tracked")
				git(t, dir, "commit", "-q", "-m", "empty")
				writeFile(t, filepath.Join(dir, "empty-staged"), "", 0o644)
				git(t, dir, "add", "empty-staged")
				writeFile(t, filepath.Join(dir, "empty-untracked"), "", 0o644)
				writeFile(t, filepath.Join(dir, "README.md"), "", 0o644) // emptied
			},
		},
		{
			name: "detached at tag",
			setup: func(t *testing.T, dir string) {
				git(t, dir, "checkout", "-q", "v1")
				writeFile(t, filepath.Join(dir, "wip.txt"), "wip\n", 0o644)
			},
			check: func(t *testing.T, dir string, res guestResult) {
				if !res.plan.Detached || res.plan.Branch != "" {
					t.Fatalf("plan = %+v, want detached", res.plan)
				}
				if got := git(t, res.dir, "branch", "--show-current"); got != "" {
					t.Fatalf("guest is on branch %q", got)
				}
				if !strings.Contains(git(t, res.dir, "branch"), "HEAD detached at v1") {
					t.Fatalf("guest branch: %s", git(t, res.dir, "branch"))
				}
			},
		},
		{
			name: "detached with new commits",
			setup: func(t *testing.T, dir string) {
				git(t, dir, "checkout", "-q", "--detach", "feature")
				writeFile(t, filepath.Join(dir, "feature.txt"), "more\n", 0o644)
				git(t, dir, "commit", "-q", "-am", "detached work")
			},
			check: func(t *testing.T, dir string, res guestResult) {
				if !strings.Contains(git(t, res.dir, "branch"), "HEAD detached from refs/heads/feature") {
					t.Fatalf("guest branch: %s", git(t, res.dir, "branch"))
				}
			},
		},
		{
			name: "detached without reflog",
			setup: func(t *testing.T, dir string) {
				git(t, dir, "checkout", "-q", "--detach")
				must(t, os.RemoveAll(filepath.Join(dir, ".git/logs")))
			},
		},
		{
			name: "index flags",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "ita.txt"), "intent\n", 0o644)
				git(t, dir, "add", "-N", "ita.txt")
				git(t, dir, "update-index", "--skip-worktree", "src/util.go")
				os.Remove(filepath.Join(dir, "src/util.go")) // absent but not deleted
				git(t, dir, "update-index", "--assume-unchanged", "docs/a.txt")
				writeFile(t, filepath.Join(dir, "docs/a.txt"), "changed behind git's back\n", 0o644)
			},
			check: func(t *testing.T, dir string, res guestResult) {
				p := res.plan
				if !slices.Equal(p.IntentToAdd, PathList{"ita.txt"}) || !slices.Equal(p.SkipWorktree, PathList{"src/util.go"}) ||
					!slices.Equal(p.AssumeUnchanged, PathList{"docs/a.txt"}) || len(p.Deleted) != 0 {
					t.Fatalf("plan flags: ita %q skip %q assume %q deleted %q", p.IntentToAdd, p.SkipWorktree, p.AssumeUnchanged, p.Deleted)
				}
			},
		},
		{
			name: "split index",
			setup: func(t *testing.T, dir string) {
				git(t, dir, "update-index", "--split-index")
				writeFile(t, filepath.Join(dir, "src/main.go"), "package main // staged\n", 0o644)
				git(t, dir, "add", "src/main.go")
			},
		},
		{
			name:     "sha256",
			initArgs: []string{"--object-format=sha256"},
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "src/main.go"), "package main // staged\n", 0o644)
				git(t, dir, "add", "src/main.go")
			},
			check: func(t *testing.T, dir string, res guestResult) {
				if res.plan.ObjectFormat != "sha256" || len(res.plan.Head) != 64 {
					t.Fatalf("plan = %+v", res.plan)
				}
			},
		},
		{
			name: "nested untracked repository",
			setup: func(t *testing.T, dir string) {
				git(t, dir, "init", "-q", "vendored")
				writeFile(t, filepath.Join(dir, "vendored/file"), "x\n", 0o644)
			},
			notCopied: []string{"vendored/"},
			check: func(t *testing.T, dir string, res guestResult) {
				if len(res.stats.Skipped) != 1 || res.stats.Skipped[0].Path != "vendored" {
					t.Fatalf("skipped = %+v", res.stats.Skipped)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := newRepo(t, tt.initArgs...)
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			res := simulateGuest(t, dir, Options{})
			// Host git status runs after the snapshots were compared:
			// it may refresh the host index.
			host := repoState(t, dir)
			guest := repoState(t, res.dir)
			if tt.name == "nested untracked repository" {
				// git lists the nested repository as untracked; it is
				// reported as skipped instead of copied.
				host["status --porcelain=v2 --branch --untracked-files=all"] = strings.Replace(
					host["status --porcelain=v2 --branch --untracked-files=all"], "? vendored/\n", "", 1)
			}
			compareStates(t, host, guest)
			compareFiles(t, dir, res.dir, tt.notCopied)
			if tt.check != nil {
				tt.check(t, dir, res)
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpstream covers the base commit and the upstream configuration: the
// host is a clone that is two commits ahead of and one behind origin.
func TestUpstream(t *testing.T) {
	t.Parallel()
	origin := newRepo(t)
	host := filepath.Join(t.TempDir(), "clone")
	git(t, origin, "checkout", "-q", "--detach") // so origin accepts pushes to main
	git(t, t.TempDir(), "clone", "-q", origin, host)
	git(t, host, "config", "user.name", "Host User")
	fork := strings.TrimSpace(git(t, host, "rev-parse", "HEAD"))
	for _, msg := range []string{"local 1", "local 2"} {
		writeFile(t, filepath.Join(host, "local.txt"), msg+"\n", 0o644)
		git(t, host, "add", "local.txt")
		git(t, host, "commit", "-q", "-m", msg)
	}
	git(t, origin, "checkout", "-q", "main")
	writeFile(t, filepath.Join(origin, "upstream.txt"), "upstream\n", 0o644)
	git(t, origin, "add", "upstream.txt")
	git(t, origin, "commit", "-q", "-m", "upstream work")
	git(t, host, "fetch", "-q")
	git(t, host, "remote", "set-url", "origin", "https://user:s3cret@example.com/project.git")
	git(t, host, "remote", "set-url", "origin", "--push", "https://push.example.com/project.git")

	res := simulateGuest(t, host, Options{})
	if res.repo.Base != fork {
		t.Fatalf("Base = %s, want the merge-base %s", res.repo.Base, fork)
	}
	if res.repo.Base == res.repo.Head {
		t.Fatal("Base equals Head although the branch is ahead")
	}
	up := res.plan.Upstream
	if up == nil || up.Ref != "refs/remotes/origin/main" || up.Remote != "origin" || up.Merge != "refs/heads/main" ||
		up.URL != "https://example.com/project.git" {
		t.Fatalf("upstream = %+v", up)
	}
	if res.plan.Symrefs["refs/remotes/origin/HEAD"] != "refs/remotes/origin/main" {
		t.Fatalf("symrefs = %v", res.plan.Symrefs)
	}
	hostState, guestState := repoState(t, host), repoState(t, res.dir)
	if !strings.Contains(guestState["status --porcelain=v2 --branch --untracked-files=all"], "# branch.ab +2 -1") {
		t.Fatalf("guest status does not track origin/main:\n%s", guestState["status --porcelain=v2 --branch --untracked-files=all"])
	}
	compareStates(t, hostState, guestState)
	compareFiles(t, host, res.dir, nil)
	if strings.Contains(git(t, res.dir, "config", "--list"), "s3cret") {
		t.Fatal("credentials reached the guest")
	}

	// Without an upstream, Base is Head.
	git(t, host, "branch", "--unset-upstream")
	repo, err := Resolve(context.Background(), system.Exec{}, host)
	if err != nil {
		t.Fatal(err)
	}
	if repo.Upstream != nil || repo.Base != repo.Head {
		t.Fatalf("without upstream: %+v", repo)
	}
}

// TestGuestBranch covers --branch and --from: the branch exists only in
// the guest, the working state carries over, the host stays untouched
// (simulateGuest checks that).
func TestGuestBranch(t *testing.T) {
	t.Parallel()
	t.Run("at head", func(t *testing.T) {
		t.Parallel()
		dir := newRepo(t)
		writeFile(t, filepath.Join(dir, "src/main.go"), "package main // staged\n", 0o644)
		git(t, dir, "add", "src/main.go")
		writeFile(t, filepath.Join(dir, "src/main.go"), "package main // unstaged\n", 0o644)
		writeFile(t, filepath.Join(dir, "untracked.txt"), "u\n", 0o644)

		res := simulateGuest(t, dir, Options{Branch: "agent/task-1"})
		if got := strings.TrimSpace(git(t, res.dir, "branch", "--show-current")); got != "agent/task-1" {
			t.Fatalf("guest branch = %q", got)
		}
		if git(t, res.dir, "rev-parse", "HEAD") != git(t, dir, "rev-parse", "HEAD") {
			t.Fatal("guest HEAD moved")
		}
		hostBranches := strings.Fields(git(t, dir, "branch", "--format=%(refname:short)"))
		guestBranches := strings.Fields(git(t, res.dir, "branch", "--format=%(refname:short)"))
		want := append(hostBranches, "agent/task-1")
		slices.Sort(want)
		if !slices.Equal(guestBranches, want) {
			t.Fatalf("guest branches %q, want %q", guestBranches, want)
		}
		if _, err := os.Stat(filepath.Join(dir, ".git/refs/heads/agent")); !os.IsNotExist(err) {
			t.Fatal("the branch was created on the host")
		}
		statusNoBranch := []string{"status", "--porcelain=v2", "--untracked-files=all"}
		if h, g := git(t, dir, statusNoBranch...), git(t, res.dir, statusNoBranch...); h != g {
			t.Fatalf("status differs\nhost:\n%s\nguest:\n%s", h, g)
		}
		compareFiles(t, dir, res.dir, nil)
	})
	t.Run("from tag with compatible changes", func(t *testing.T) {
		t.Parallel()
		dir := newRepo(t)
		writeFile(t, filepath.Join(dir, "untracked.txt"), "u\n", 0o644)
		writeFile(t, filepath.Join(dir, "src/util.go"), "package main // changed\n", 0o644)

		res := simulateGuest(t, dir, Options{Branch: "agent", From: "v1"})
		v1 := git(t, dir, "rev-parse", "v1^{commit}")
		if got := git(t, res.dir, "rev-parse", "HEAD"); got != v1 {
			t.Fatalf("guest HEAD = %s, want v1 = %s", got, v1)
		}
		if res.plan.From != strings.TrimSpace(v1) {
			t.Fatalf("plan.From = %q", res.plan.From)
		}
		if got := strings.TrimSpace(git(t, res.dir, "branch", "--show-current")); got != "agent" {
			t.Fatalf("guest branch = %q", got)
		}
		// README.md differs between v1 and main, and is clean: it is
		// v1's in the guest; the local edits carried over.
		if got, _ := os.ReadFile(filepath.Join(res.dir, "README.md")); string(got) != "# project\n" {
			t.Fatalf("README.md = %q", got)
		}
		if got, _ := os.ReadFile(filepath.Join(res.dir, "src/util.go")); string(got) != "package main // changed\n" {
			t.Fatalf("src/util.go = %q", got)
		}
		if got := git(t, res.dir, "status", "--porcelain"); got != " M src/util.go\n?? untracked.txt\n" {
			t.Fatalf("guest status:\n%s", got)
		}
		if refs := git(t, res.dir, "for-each-ref", "refs/banger/"); refs != "" {
			t.Fatalf("helper refs left in the guest: %s", refs)
		}
	})
	t.Run("from with conflicting changes", func(t *testing.T) {
		t.Parallel()
		dir := newRepo(t)
		writeFile(t, filepath.Join(dir, "README.md"), "local edit\n", 0o644)
		ctx := context.Background()
		repo, err := Resolve(ctx, system.Exec{}, dir)
		must(t, err)
		ws, err := Prepare(ctx, system.Exec{}, repo, Options{Branch: "agent", From: "v1"})
		must(t, err)
		defer ws.Close()
		var overlay bytes.Buffer
		_, err = ws.WriteOverlay(ctx, &overlay)
		must(t, err)
		err = ApplyPlan(ctx, system.Exec{}, filepath.Join(t.TempDir(), "repo"), ws.Plan, hostStreamsOf(t, ws).with(overlay.Bytes()), nil)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Hint, "--from") {
			t.Fatalf("err = %#v", err)
		}
	})
}

// TestPrepareErrors covers what cannot be prepared, and that each error
// tells the user what to do.
func TestPrepareErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := system.Exec{}
	tests := []struct {
		name     string
		path     func(t *testing.T) string
		opts     Options
		wantMsg  string
		wantHint string
		// fullCopyOK: the same repository works with --mode full_copy.
		fullCopyOK bool
	}{
		{
			name:     "not a repository",
			path:     func(t *testing.T) string { needGit(t); return t.TempDir() },
			wantMsg:  "not inside a git repository",
			wantHint: "git init",
		},
		{
			name:     "missing path",
			path:     func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") },
			wantMsg:  "does not exist",
			wantHint: "directory inside a git working tree",
		},
		{
			name: "bare repository",
			path: func(t *testing.T) string {
				needGit(t)
				dir := filepath.Join(t.TempDir(), "bare.git")
				git(t, t.TempDir(), "init", "-q", "--bare", dir)
				return dir
			},
			wantMsg:  "bare git repository",
			wantHint: "git clone",
		},
		{
			name:     "inside .git",
			path:     func(t *testing.T) string { return filepath.Join(newRepo(t), ".git", "refs") },
			wantMsg:  "inside a .git directory",
			wantHint: "working tree's path",
		},
		{
			name: "submodule",
			path: func(t *testing.T) string {
				sub := newRepo(t)
				dir := newRepo(t)
				git(t, dir, "submodule", "add", "-q", sub, "libs/sub")
				git(t, dir, "commit", "-q", "-m", "add submodule")
				return dir
			},
			wantMsg:    "has submodules",
			wantHint:   "--mode full_copy",
			fullCopyOK: true,
		},
		{
			name: "gitlink without .gitmodules",
			path: func(t *testing.T) string {
				dir := newRepo(t)
				git(t, dir, "init", "-q", "embedded")
				git(t, filepath.Join(dir, "embedded"), "commit", "-q", "--allow-empty", "-m", "x")
				git(t, dir, "add", "embedded")
				return dir
			},
			wantMsg:  "has submodules",
			wantHint: "--mode full_copy",
		},
		{
			name: "no commits",
			path: func(t *testing.T) string {
				needGit(t)
				dir := t.TempDir()
				git(t, dir, "init", "-q")
				writeFile(t, filepath.Join(dir, "a"), "a\n", 0o644)
				return dir
			},
			wantMsg:    "no commits yet",
			wantHint:   "--mode full_copy",
			fullCopyOK: true,
		},
		{
			name: "shallow clone",
			path: func(t *testing.T) string {
				origin := newRepo(t)
				dir := filepath.Join(t.TempDir(), "shallow")
				git(t, t.TempDir(), "clone", "-q", "--depth", "1", "file://"+origin, dir)
				return dir
			},
			wantMsg:    "shallow clone",
			wantHint:   "--unshallow",
			fullCopyOK: true,
		},
		{
			name: "merge conflict",
			path: func(t *testing.T) string {
				dir := newRepo(t)
				git(t, dir, "checkout", "-q", "-b", "other", "v1")
				writeFile(t, filepath.Join(dir, "README.md"), "other\n", 0o644)
				git(t, dir, "commit", "-q", "-am", "other")
				git(t, dir, "checkout", "-q", "main")
				cmd := exec.Command("git", "merge", "-q", "other")
				cmd.Dir = dir
				if cmd.Run() == nil {
					t.Fatal("merge did not conflict")
				}
				return dir
			},
			wantMsg:    "unresolved conflicts in 1 file(s): README.md",
			wantHint:   "--mode full_copy",
			fullCopyOK: true,
		},
		{
			name:     "existing branch",
			path:     func(t *testing.T) string { return newRepo(t) },
			opts:     Options{Branch: "feature"},
			wantMsg:  `branch "feature" already exists`,
			wantHint: "pick a new name",
		},
		{
			name:     "bad branch name",
			path:     func(t *testing.T) string { return newRepo(t) },
			opts:     Options{Branch: "bad..name"},
			wantMsg:  "invalid branch name",
			wantHint: "such as agent/fix-tests",
		},
		{
			name:     "unknown --from",
			path:     func(t *testing.T) string { return newRepo(t) },
			opts:     Options{Branch: "x", From: "no-such-ref"},
			wantMsg:  `--from "no-such-ref" does not name a commit`,
			wantHint: "git rev-parse --verify",
		},
		{
			name:     "--from without --branch",
			path:     func(t *testing.T) string { return newRepo(t) },
			opts:     Options{From: "v1"},
			wantMsg:  "--from requires --branch",
			wantHint: "--branch NAME",
		},
		{
			name: "full copy of a linked worktree",
			path: func(t *testing.T) string {
				dir := newRepo(t)
				wt := filepath.Join(t.TempDir(), "wt")
				git(t, dir, "worktree", "add", "-q", wt, "feature")
				return wt
			},
			opts:     Options{Mode: ModeFullCopy},
			wantMsg:  "keeps its git directory elsewhere",
			wantHint: "--mode bundle",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := tt.path(t)
			repo, err := Resolve(ctx, r, path)
			var ws *Workspace
			if err == nil {
				ws, err = Prepare(ctx, r, repo, tt.opts)
			}
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v (%T), want an *api.Error", err, err)
			}
			if ws != nil {
				t.Fatal("Prepare returned a workspace with an error")
			}
			if !strings.Contains(ae.Message, tt.wantMsg) || !strings.Contains(ae.Hint, tt.wantHint) {
				t.Fatalf("error %q (hint %q), want %q (hint %q)", ae.Message, ae.Hint, tt.wantMsg, tt.wantHint)
			}
			if tt.fullCopyOK {
				res := simulateGuest(t, path, Options{Mode: ModeFullCopy})
				compareStates(t, repoState(t, path), repoState(t, res.dir))
				compareFiles(t, path, res.dir, nil)
			}
		})
	}
}

// TestFullCopySubmodules checks the submodule itself works in the guest.
func TestFullCopySubmodules(t *testing.T) {
	t.Parallel()
	sub := newRepo(t)
	// newRepo copies one template: give the submodule a history of its
	// own, so a commit resolved from the wrong repository shows.
	writeFile(t, filepath.Join(sub, "sub-only.txt"), "only in the submodule\n", 0o644)
	git(t, sub, "add", "sub-only.txt")
	git(t, sub, "commit", "-q", "-m", "submodule's own commit")
	dir := newRepo(t)
	git(t, dir, "submodule", "add", "-q", sub, "libs/sub")
	git(t, dir, "commit", "-q", "-m", "add submodule")
	writeFile(t, filepath.Join(dir, "libs/sub/README.md"), "edited in the submodule\n", 0o644)
	writeFile(t, filepath.Join(dir, "top.txt"), "untracked\n", 0o644)

	res := simulateGuest(t, dir, Options{Mode: ModeFullCopy, Branch: "agent"})
	if h, g := git(t, dir, "submodule", "status"), git(t, res.dir, "submodule", "status"); h != g {
		t.Fatalf("submodule status\nhost: %s\nguest: %s", h, g)
	}
	if h, g := git(t, filepath.Join(dir, "libs/sub"), "status", "--porcelain=v2"),
		git(t, filepath.Join(res.dir, "libs/sub"), "status", "--porcelain=v2"); h != g || g == "" {
		t.Fatalf("submodule working tree\nhost: %s\nguest: %s", h, g)
	}
	if got := strings.TrimSpace(git(t, res.dir, "branch", "--show-current")); got != "agent" {
		t.Fatalf("guest branch = %q", got)
	}
	if h, g := git(t, filepath.Join(dir, "libs/sub"), "rev-parse", "HEAD"), git(t, filepath.Join(res.dir, "libs/sub"), "rev-parse", "HEAD"); h != g || h == git(t, dir, "rev-parse", "HEAD") {
		t.Fatalf("submodule HEAD: host %s guest %s", h, g)
	}
	compareFiles(t, dir, res.dir, nil)
}

// TestLinkedWorktree prepares from a `git worktree add` checkout, whose
// index and HEAD live apart from the objects and refs.
func TestLinkedWorktree(t *testing.T) {
	t.Parallel()
	dir := newRepo(t)
	wt := filepath.Join(t.TempDir(), "wt")
	git(t, dir, "worktree", "add", "-q", wt, "feature")
	writeFile(t, filepath.Join(wt, "feature.txt"), "staged in the worktree\n", 0o644)
	git(t, wt, "add", "feature.txt")
	writeFile(t, filepath.Join(wt, "wt-only.txt"), "u\n", 0o644)

	res := simulateGuest(t, wt, Options{})
	if res.plan.Branch != "feature" {
		t.Fatalf("plan branch = %q", res.plan.Branch)
	}
	host, guest := repoState(t, wt), repoState(t, res.dir)
	// The host's `git branch` marks main as checked out in the other
	// worktree ("+ main"); the guest has one working tree.
	for _, k := range []string{"branch -a -vv"} {
		host[k] = strings.ReplaceAll(host[k], "+ main", "  main")
		host[k] = regexpWorktreePath.ReplaceAllString(host[k], "")
	}
	compareStates(t, host, guest)
	compareFiles(t, wt, res.dir, nil)
}

// TestResolveFromSubdirectoryAndFile: any path inside the working tree
// resolves to the top.
func TestResolveFromSubdirectoryAndFile(t *testing.T) {
	t.Parallel()
	dir := newRepo(t)
	real, err := filepath.EvalSymlinks(dir)
	must(t, err)
	for _, p := range []string{dir, filepath.Join(dir, "src"), filepath.Join(dir, "src/main.go")} {
		repo, err := Resolve(context.Background(), system.Exec{}, p)
		if err != nil {
			t.Fatal(err)
		}
		if repo.Root != real || repo.Branch != "main" || repo.UserName != "Host User" || repo.UserEmail != "host@example.com" ||
			repo.HasSubmodules || repo.Shallow || repo.Head == "" || repo.Base != repo.Head {
			t.Fatalf("Resolve(%s) = %+v", p, repo)
		}
	}
}

// TestOverlayVanished: files removed between Prepare and WriteOverlay are
// reported, not fatal.
func TestOverlayVanished(t *testing.T) {
	t.Parallel()
	dir := newRepo(t)
	writeFile(t, filepath.Join(dir, "temp.txt"), "soon gone\n", 0o644)
	ctx := context.Background()
	repo, err := Resolve(ctx, system.Exec{}, dir)
	must(t, err)
	ws, err := Prepare(ctx, system.Exec{}, repo, Options{})
	must(t, err)
	defer ws.Close()
	must(t, os.Remove(filepath.Join(dir, "temp.txt")))
	must(t, os.Remove(filepath.Join(dir, "src/util.go")))
	var buf bytes.Buffer
	st, err := ws.WriteOverlay(ctx, &buf)
	must(t, err)
	if !slices.Equal(st.Vanished, []string{"src/util.go", "temp.txt"}) {
		t.Fatalf("vanished = %q", st.Vanished)
	}
	names := tarNames(t, buf.Bytes())
	if slices.Contains(names, "temp.txt") || !slices.Contains(names, "src/main.go") {
		t.Fatalf("overlay names = %q", names)
	}
	if st.Files != len(names) {
		t.Fatalf("stats %+v for %d entries", st, len(names))
	}
}

// TestOverlayModes: regular files are 0644 or 0755 whatever the umask or
// group bits, as git records them.
func TestOverlayModes(t *testing.T) {
	t.Parallel()
	dir := newRepo(t)
	writeFile(t, filepath.Join(dir, "private"), "p\n", 0o600)
	writeFile(t, filepath.Join(dir, "group-exec"), "g\n", 0o770)
	ctx := context.Background()
	repo, err := Resolve(ctx, system.Exec{}, dir)
	must(t, err)
	ws, err := Prepare(ctx, system.Exec{}, repo, Options{})
	must(t, err)
	defer ws.Close()
	var buf bytes.Buffer
	_, err = ws.WriteOverlay(ctx, &buf)
	must(t, err)
	want := map[string]int64{"private": 0o644, "group-exec": 0o755, "script.sh": 0o755, "README.md": 0o644}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		if m, ok := want[hdr.Name]; ok {
			if hdr.Mode != m {
				t.Errorf("%s: mode %o, want %o", hdr.Name, hdr.Mode, m)
			}
			delete(want, hdr.Name)
		}
	}
	if len(want) > 0 {
		t.Fatalf("missing from the overlay: %v", want)
	}
}

// regexpWorktreePath matches the "(/path/of/other/worktree) " git branch
// -vv prints for a branch checked out elsewhere.
var regexpWorktreePath = regexp.MustCompile(`\(/[^)]*\) `)

func tarNames(t testing.TB, data []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		must(t, err)
		names = append(names, hdr.Name)
	}
}
