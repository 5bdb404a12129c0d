package workspace

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/system"
)

// TestMain makes git hermetic: no system or user configuration, no GIT_*
// variables inherited from a hook that happens to run the tests, and a
// global configuration with an identity that differs from the one the
// test repositories set locally (so a test sees which one wins).
func TestMain(m *testing.M) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "GIT_") {
			os.Unsetenv(k)
		}
	}
	home, err := os.MkdirTemp("", "workspace-test-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	global := `[user]
	name = Global User
	email = global@example.com
[init]
	defaultBranch = main
[protocol "file"]
	allow = always
[advice]
	detachedHead = false
`
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(global), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	os.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	templateRoot = home
	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}

func needGit(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
}

// git runs a git command in dir for test setup and inspection.
func git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s (in %s): %v: %s", strings.Join(args, " "), dir, err, stderr.String())
	}
	return string(out)
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
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

// newRepo makes a repository with some history: two commits on main, an
// annotated and a lightweight tag, and a side branch.
func newRepo(t testing.TB, initArgs ...string) string {
	t.Helper()
	needGit(t)
	// Every test starts from the same repository: it is made once (per
	// git init arguments) and copied, which spares each test the dozen
	// git commands that make it, most of this package's time.
	key := strings.Join(initArgs, " ")
	v, _ := templates.LoadOrStore(key, &template{})
	tpl := v.(*template)
	tpl.once.Do(func() {
		// Made by the first test that needs it; should that test fail
		// half-way, the others are told rather than given half a repo.
		tpl.err = errors.New("making it failed in another test")
		parent, err := os.MkdirTemp(templateRoot, "template-")
		if err != nil {
			tpl.err = err
			return
		}
		tpl.dir = filepath.Join(parent, "host repo")
		makeRepo(t, tpl.dir, initArgs)
		tpl.err = nil
	})
	if tpl.err != nil {
		t.Fatalf("make the template repository: %v", tpl.err)
	}
	dir := filepath.Join(t.TempDir(), "host repo")
	// cp -a keeps modes and times; git sees new inodes and re-checks the
	// files' contents, as after any copy of a repository.
	if out, err := exec.Command("cp", "-a", tpl.dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the template repository: %v: %s", err, out)
	}
	return dir
}

type template struct {
	once sync.Once
	dir  string
	err  error
}

var (
	templates    sync.Map // git init arguments → *template
	templateRoot string   // set by TestMain, removed after the tests
)

// makeRepo makes the repository newRepo hands out: two branches, tags,
// a few files.
func makeRepo(t testing.TB, dir string, initArgs []string) {
	t.Helper()
	git(t, t.TempDir(), append([]string{"init", "-q"}, append(initArgs, dir)...)...)
	git(t, dir, "config", "user.name", "Host User")
	git(t, dir, "config", "user.email", "host@example.com")
	writeFile(t, filepath.Join(dir, "README.md"), "# project\n", 0o644)
	writeFile(t, filepath.Join(dir, "src/main.go"), "package main\n\nfunc main() {}\n", 0o644)
	writeFile(t, filepath.Join(dir, "src/util.go"), "package main\n\nfunc util() {}\n", 0o644)
	writeFile(t, filepath.Join(dir, "script.sh"), "#!/bin/sh\necho hi\n", 0o755)
	writeFile(t, filepath.Join(dir, "docs/a.txt"), "line 1\nline 2\nline 3\n", 0o644)
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "initial")
	git(t, dir, "tag", "-a", "v1", "-m", "release 1")
	git(t, dir, "tag", "light")
	git(t, dir, "branch", "feature")
	writeFile(t, filepath.Join(dir, "README.md"), "# project\n\nmore\n", 0o644)
	git(t, dir, "commit", "-q", "-am", "second")
	git(t, dir, "checkout", "-q", "feature")
	writeFile(t, filepath.Join(dir, "feature.txt"), "feature\n", 0o644)
	git(t, dir, "add", "feature.txt")
	git(t, dir, "commit", "-q", "-m", "feature work")
	git(t, dir, "checkout", "-q", "main")
}

// guestResult is what the simulated guest ended up with.
type guestResult struct {
	dir     string
	repo    Repo
	plan    GuestPlan
	stats   OverlayStats
	overlay []byte
}

// simulateGuest runs the host side on hostPath, round-trips the plan
// through JSON as the daemon will, and runs ApplyPlan into a fresh
// directory with real git: the guest agent's job, minus the VM. It also
// checks that the host repository was not written to at all.
func simulateGuest(t testing.TB, hostPath string, opts Options) guestResult {
	t.Helper()
	ctx := context.Background()
	r := system.Exec{}
	repo, err := Resolve(ctx, r, hostPath)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	before := snapshotHost(t, repo)

	var res guestResult
	res.repo = repo
	ws, err := Prepare(ctx, r, repo, opts)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	res.plan = ws.Plan
	var overlay bytes.Buffer
	var hs hostStreams
	if opts.EffectiveMode() == ModeFullCopy {
		if res.stats, err = WriteFullCopy(ctx, repo, &overlay); err != nil {
			t.Fatalf("WriteFullCopy: %v", err)
		}
	} else {
		// The order the daemon uses: the entries after the overlay.
		var bundle, idx, entries bytes.Buffer
		if err := ws.WriteBundle(ctx, &bundle); err != nil {
			t.Fatalf("WriteBundle: %v", err)
		}
		if err := ws.WritePackIndex(ctx, bytes.NewReader(bundle.Bytes()), &idx); err != nil {
			t.Fatalf("WritePackIndex: %v", err)
		}
		if res.stats, err = ws.WriteOverlay(ctx, &overlay); err != nil {
			t.Fatalf("WriteOverlay: %v", err)
		}
		if err := ws.WriteEntries(ctx, &entries); err != nil {
			t.Fatalf("WriteEntries: %v", err)
		}
		hs = hostStreams{bundle.Bytes(), idx.Bytes(), entries.Bytes()}
	}
	scratch := ws.scratch
	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	if scratch != "" {
		if _, err := os.Stat(scratch); !os.IsNotExist(err) {
			t.Fatalf("Close left the scratch directory %s: %v", scratch, err)
		}
	}
	after := snapshotHost(t, repo)
	compareSnapshots(t, before, after)

	// The daemon and the agent exchange the plan as JSON.
	data, err := json.Marshal(res.plan)
	if err != nil {
		t.Fatal(err)
	}
	var plan GuestPlan
	if err := json.Unmarshal(data, &plan); err != nil {
		t.Fatal(err)
	}

	res.dir = filepath.Join(t.TempDir(), "repo")
	res.overlay = overlay.Bytes()
	streams := Streams{Overlay: bytes.NewReader(res.overlay)}
	if hs.bundle != nil {
		streams = hs.with(res.overlay)
	}
	if err := ApplyPlan(ctx, r, res.dir, plan, streams, nil); err != nil {
		t.Fatalf("ApplyPlan: %v", err)
	}
	return res
}

// hostSnapshot is every byte and timestamp the host side could have
// touched.
type hostSnapshot map[string]string

// snapshotHost records, for every path under the working tree and the git
// directories, its type, mode, size, mtime and content hash (directories:
// mtime, which moves when anything, even a lock file, is created in them).
func snapshotHost(t testing.TB, repo Repo) hostSnapshot {
	t.Helper()
	s := hostSnapshot{}
	for _, top := range []string{repo.Root, repo.GitDir, repo.CommonDir} {
		err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			v := fmt.Sprintf("%v %d", fi.Mode(), fi.Size())
			if !freshened(p) {
				v += fmt.Sprintf(" %d", fi.ModTime().UnixNano())
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				v += " -> " + target
			case fi.Mode().IsRegular():
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(data)
				v += " " + hex.EncodeToString(sum[:])
			}
			s[p] = v
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// freshened: files whose mtime git bumps when merely reading or when an
// identical object is written elsewhere ("freshening", so gc keeps them):
// shared index files when the split index is read, and existing objects
// (loose or packs) when write-tree in the scratch repository produces a
// tree the host already has. Their content and existence are still
// compared.
func freshened(p string) bool {
	base := filepath.Base(p)
	if strings.HasPrefix(base, "sharedindex.") {
		return true
	}
	dir := filepath.Base(filepath.Dir(p))
	return len(dir) == 2 && len(base) >= 38 || dir == "pack"
}

func compareSnapshots(t testing.TB, before, after hostSnapshot) {
	t.Helper()
	var diffs []string
	for p, v := range before {
		if w, ok := after[p]; !ok {
			diffs = append(diffs, "removed "+p)
		} else if w != v {
			diffs = append(diffs, fmt.Sprintf("changed %s: %s -> %s", p, v, w))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "added "+p)
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		t.Fatalf("the host repository changed:\n%s", strings.Join(diffs, "\n"))
	}
}

// repoState is what a user of the repository sees through git.
func repoState(t testing.TB, dir string) map[string]string {
	t.Helper()
	cmds := [][]string{
		{"status", "--porcelain=v2", "--branch", "--untracked-files=all"},
		{"rev-parse", "HEAD"},
		{"branch", "-a", "-vv"},
		{"tag", "-n"},
		{"log", "--format=%H %P %an <%ae> %s"},
		{"log", "--all", "--format=%H %D"},
		{"for-each-ref", "--format=%(objectname) %(refname) %(symref)"},
		{"ls-files", "--stage", "-v"},
		{"config", "user.name"},
		{"config", "user.email"},
	}
	st := map[string]string{}
	for _, c := range cmds {
		cmd := exec.Command("git", c...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			// HEAD of an unborn branch, an unset user.name: the error
			// text is part of the state.
			out = append(out, []byte("\nerror: "+err.Error())...)
		}
		st[strings.Join(c, " ")] = string(out)
	}
	return st
}

func compareStates(t testing.TB, host, guest map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(host))
	for k := range host {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if host[k] != guest[k] {
			t.Errorf("git %s differs\nhost:\n%s\nguest:\n%s", k, host[k], guest[k])
		}
	}
}

// fileListing maps every non-directory below dir (except .git) to its
// type, executable bit and content hash or link target.
func fileListing(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == ".git" {
			// A directory, or in a linked worktree a file pointing at one.
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			x := "-"
			if fi.Mode()&0o100 != 0 {
				x = "x"
			}
			out[rel] = "file " + x + " " + hex.EncodeToString(sum[:])
		default:
			out[rel] = "other " + fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// compareFiles checks the guest has exactly the host's files, minus the
// ones that must not travel (which must exist on the host, so the check
// means something). A notCopied entry ending in "/" covers a whole tree.
func compareFiles(t testing.TB, host, guest string, notCopied []string) {
	t.Helper()
	h, g := fileListing(t, host), fileListing(t, guest)
	for _, nc := range notCopied {
		found := false
		for p := range h {
			if p == nc || strings.HasSuffix(nc, "/") && strings.HasPrefix(p, nc) {
				found = true
				delete(h, p)
				if _, ok := g[p]; ok {
					t.Errorf("%q was copied to the guest", p)
				}
			}
		}
		if !found {
			t.Errorf("test setup: %q should exist on the host", nc)
		}
	}
	for p, v := range h {
		if g[p] != v {
			t.Errorf("%q: host %q, guest %q", p, v, g[p])
		}
	}
	for p, v := range g {
		if _, ok := h[p]; !ok {
			t.Errorf("%q exists only in the guest (%q)", p, v)
		}
	}
}
