package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// Workspace is one prepared snapshot of a repository: the guest plan plus
// what is needed to stream the bundle and the overlay. Close removes its
// scratch directory. The Write methods only read and may run
// concurrently.
type Workspace struct {
	Repo Repo
	Plan GuestPlan

	r system.Runner
	// scratch holds the scratch GIT_DIR (bundle mode only).
	scratch string
	// entries are the overlay candidates, sorted by path.
	entries []entry
}

// entry is one path git lists in the working tree.
type entry struct {
	path    string
	tracked bool
	// skipWorktree entries may be absent from disk without being
	// deleted: git does not look at them.
	skipWorktree bool
	// nestedRepo: an untracked directory holding its own repository,
	// which git lists as "dir/" and never looks into.
	nestedRepo bool
	// mode, oid and assumeUnchanged describe a tracked entry's index
	// record (what the guest's index gets).
	mode            string
	oid             string
	assumeUnchanged bool
}

// Check refuses, with the same errors as Prepare, what Prepare would
// refuse before reading the working tree: bad options, a mode the
// repository cannot use, a --branch that exists or a --from that does
// not. It is cheap, so `banger vm run` checks before it creates a VM.
func Check(ctx context.Context, r system.Runner, repo Repo, opts Options) error {
	_, err := newWorkspace(ctx, r, repo, opts)
	return err
}

// newWorkspace builds the plan from what Resolve learned and checks it.
func newWorkspace(ctx context.Context, r system.Runner, repo Repo, opts Options) (*Workspace, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	w := &Workspace{Repo: repo, r: r, Plan: GuestPlan{
		Version:      PlanVersion,
		Mode:         opts.EffectiveMode(),
		ObjectFormat: repo.ObjectFormat,
		Head:         repo.Head,
		Base:         repo.Base,
		Branch:       repo.Branch,
		Detached:     repo.Branch == "",
		DetachedFrom: repo.DetachedFrom,
		Upstream:     repo.Upstream,
		NewBranch:    opts.Branch,
		UserName:     repo.UserName,
		UserEmail:    repo.UserEmail,
	}}
	if err := w.resolveBranchOptions(ctx, opts); err != nil {
		return nil, err
	}
	if w.Plan.Mode == ModeFullCopy {
		if err := checkFullCopy(repo); err != nil {
			return nil, err
		}
		return w, nil
	}
	switch {
	case repo.HasSubmodules:
		return nil, api.Errorf(api.CodeInvalid,
			"use --mode full_copy to copy the whole directory, .git and submodules included",
			"%s has submodules, which a bundle cannot carry", repo.Root)
	case repo.Head == "":
		return nil, api.Errorf(api.CodeInvalid,
			"make a first commit (git commit --allow-empty -m init), or use --mode full_copy",
			"the current branch of %s has no commits yet", repo.Root)
	case repo.Shallow:
		return nil, api.Errorf(api.CodeInvalid,
			"fetch the full history (git fetch --unshallow), or use --mode full_copy",
			"%s is a shallow clone: its history cannot be bundled", repo.Root)
	}

	return w, nil
}

// Prepare takes the snapshot the guest will reproduce. It rejects what
// the chosen mode cannot carry, each time saying what to do instead, and
// never writes to the user's repository.
//
// How the index is reproduced (bundle mode): the host's index file is
// copied into a scratch GIT_DIR that reads the repository's objects
// through objects/info/alternates, and `git write-tree` there yields the
// staged tree; `git commit-tree` wraps it in a commit that a RefIndex ref
// of the scratch repository points at, so the bundle (created from the
// scratch repository too) carries every staged blob, including those of
// partially staged files, which no host commit holds. The guest fetches
// the bundle and runs `git read-tree IndexTree`. New objects land in the
// scratch directory only, so not even unreachable objects are added to
// the user's object database; the one trace git leaves is "freshening":
// when write-tree produces a tree the host already has, git bumps that
// object's (or pack's) mtime, which only delays its pruning. Reading a
// split index does the same to its sharedindex file. What a tree cannot
// express travels as path lists: intent-to-add entries (write-tree leaves
// them out), skip-worktree and assume-unchanged flags. Unmerged entries
// are refused.
//
// Why not a temporary commit and ref in the user's repository, or
// GIT_INDEX_FILE with the user's GIT_DIR: both write into the user's .git
// (a ref, objects, possibly a new shared index), and a crash would leave
// them behind.
func Prepare(ctx context.Context, r system.Runner, repo Repo, opts Options) (_ *Workspace, err error) {
	w, err := newWorkspace(ctx, r, repo, opts)
	if err != nil || w.Plan.Mode == ModeFullCopy {
		return w, err
	}
	if err := w.list(ctx); err != nil {
		return nil, err
	}
	w.scratch, err = os.MkdirTemp("", "banger-workspace-")
	if err != nil {
		return nil, fmt.Errorf("create scratch directory: %w", err)
	}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if err := w.buildScratch(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// Close removes the scratch directory.
func (w *Workspace) Close() error {
	if w.scratch == "" {
		return nil
	}
	err := os.RemoveAll(w.scratch)
	w.scratch = ""
	return err
}

// resolveBranchOptions checks --branch against the host's branches (the
// guest has the same ones) and resolves --from to a commit id, so the
// guest never depends on a ref name the bundle might not carry.
func (w *Workspace) resolveBranchOptions(ctx context.Context, opts Options) error {
	if opts.Branch == "" {
		return nil
	}
	g := w.Repo.git(w.r)
	if _, err := g.run(ctx, "check-ref-format", "refs/heads/"+opts.Branch); err != nil {
		if exitCode(err) == 1 {
			return api.Errorf(api.CodeInvalid, "pick a name git accepts for a branch, such as agent/fix-tests",
				"invalid branch name %q", opts.Branch)
		}
		return gitError(err, "check branch name "+opts.Branch)
	}
	_, exists, err := g.optionalLine(ctx, withArgs(hostConfig, "rev-parse", "-q", "--verify", "refs/heads/"+opts.Branch)...)
	if err != nil {
		return gitError(err, "look up branch "+opts.Branch)
	}
	if exists {
		return api.Errorf(api.CodeConflict, "pick a new name: --branch creates a branch that exists only in the VM",
			"branch %q already exists in %s", opts.Branch, w.Repo.Root)
	}
	if opts.From == "" {
		return nil
	}
	sha, ok, err := g.optionalLine(ctx, withArgs(hostConfig, "rev-parse", "-q", "--verify", "--end-of-options", opts.From+"^{commit}")...)
	if err != nil {
		return gitError(err, "resolve --from "+opts.From)
	}
	if !ok {
		return api.Errorf(api.CodeInvalid, "pass a branch, tag or commit that exists on the host (check with git rev-parse --verify REF)",
			"--from %q does not name a commit in %s", opts.From, w.Repo.Root)
	}
	w.Plan.From = sha
	return nil
}

// checkFullCopy refuses repositories whose .git is not a directory inside
// the working tree: the copy would carry a pointer to a host path.
func checkFullCopy(repo Repo) error {
	if filepath.Clean(repo.GitDir) != filepath.Join(repo.Root, ".git") || filepath.Clean(repo.CommonDir) != filepath.Clean(repo.GitDir) {
		return api.Errorf(api.CodeInvalid,
			"run it from the main working tree (not a git worktree or a --separate-git-dir checkout), or use --mode bundle",
			"%s keeps its git directory elsewhere (%s), so a full copy would not be a repository", repo.Root, repo.CommonDir)
	}
	return nil
}

// list reads the index and the untracked files, and works out which
// tracked files are deleted on disk.
func (w *Workspace) list(ctx context.Context) error {
	g := w.Repo.git(w.r)
	cached, err := g.run(ctx, withArgs(hostConfig, "ls-files", "-z", "--stage", "-v")...)
	if err != nil {
		return gitError(err, "list the index of "+w.Repo.Root)
	}
	others, err := g.run(ctx, withArgs(hostConfig, "ls-files", "-z", "--others", "--exclude-standard")...)
	if err != nil {
		return gitError(err, "list the untracked files of "+w.Repo.Root)
	}

	var unmerged []string
	seen := map[string]bool{}
	for rec := range bytes.SplitSeq(cached, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		// "<tag> <mode> <object> <stage>\t<path>"; the tag is lowercase
		// for assume-unchanged entries.
		meta, path, ok := strings.Cut(string(rec), "\t")
		f := strings.Fields(meta)
		if !ok || len(f) != 4 || len(f[0]) != 1 {
			return fmt.Errorf("list the index of %s: unexpected git ls-files record %q", w.Repo.Root, rec)
		}
		if f[3] != "0" {
			if !seen[path] {
				unmerged = append(unmerged, path)
			}
			seen[path] = true
			continue
		}
		seen[path] = true
		tag := f[0][0]
		e := entry{path: path, tracked: true, skipWorktree: tag == 'S' || tag == 's', mode: f[1], oid: f[2]}
		if tag >= 'a' && tag <= 'z' {
			e.assumeUnchanged = true
			w.Plan.AssumeUnchanged = append(w.Plan.AssumeUnchanged, path)
		}
		if e.skipWorktree {
			w.Plan.SkipWorktree = append(w.Plan.SkipWorktree, path)
		}
		w.entries = append(w.entries, e)
	}
	if len(unmerged) > 0 {
		return api.Errorf(api.CodeConflict,
			"resolve the conflicts and git add the files (or abort the merge, rebase or cherry-pick), or use --mode full_copy",
			"%s has unresolved conflicts in %d file(s): %s", w.Repo.Root, len(unmerged), summarize(unmerged))
	}
	for rec := range bytes.SplitSeq(others, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		path := string(rec)
		if nested, ok := strings.CutSuffix(path, "/"); ok {
			w.entries = append(w.entries, entry{path: nested, nestedRepo: true})
			continue
		}
		w.entries = append(w.entries, entry{path: path})
	}
	sort.Slice(w.entries, func(i, j int) bool { return w.entries[i].path < w.entries[j].path })

	root, err := os.OpenRoot(w.Repo.Root)
	if err != nil {
		return fmt.Errorf("open %s: %w", w.Repo.Root, err)
	}
	defer root.Close()
	lst := newTreeStat(root)
	for _, e := range w.entries {
		if !e.tracked || e.skipWorktree {
			continue
		}
		fi, err := lst.lstat(e.path)
		switch {
		case isGone(err):
			w.Plan.Deleted = append(w.Plan.Deleted, e.path)
		case err != nil:
			return fmt.Errorf("inspect %s: %w", e.path, err)
		case fi.IsDir():
			// Replaced by a directory: git sees the file as deleted and
			// lists the directory's files as untracked.
			w.Plan.Deleted = append(w.Plan.Deleted, e.path)
		}
	}
	return nil
}

// buildScratch makes the scratch GIT_DIR: the index tree and its commit,
// a copy of the branch, tag and remote-tracking refs, and the helper refs.
func (w *Workspace) buildScratch(ctx context.Context) error {
	repo := w.Repo
	gitDir := filepath.Join(w.scratch, "git")
	if _, err := (gitCmd{r: w.r, dir: w.scratch, env: hostEnv}).run(ctx, withArgs(quietConfig,
		"init", "--quiet", "--bare", "--template=", "--object-format="+repo.ObjectFormat, gitDir)...); err != nil {
		return gitError(err, "create scratch repository")
	}
	info := filepath.Join(gitDir, "objects", "info")
	if err := os.MkdirAll(info, 0o700); err != nil {
		return fmt.Errorf("create scratch repository: %w", err)
	}
	if err := os.WriteFile(filepath.Join(info, "alternates"), []byte(repo.ObjectsDir+"\n"), 0o600); err != nil {
		return fmt.Errorf("create scratch repository: %w", err)
	}
	if err := copyIndex(repo, gitDir); err != nil {
		return err
	}
	sg := w.scratchGit()

	tree, err := sg.line(ctx, withArgs(quietConfig, "write-tree")...)
	if err != nil {
		return gitError(err, "write the staged tree of "+repo.Root)
	}
	w.Plan.IndexTree = tree
	commit, err := sg.runOpts(ctx, system.RunOpts{Env: []string{
		// Fixed identity and date: the commit needs no user.email and
		// is the same for the same staged state.
		"GIT_AUTHOR_NAME=banger", "GIT_AUTHOR_EMAIL=banger@localhost", "GIT_AUTHOR_DATE=@0 +0000",
		"GIT_COMMITTER_NAME=banger", "GIT_COMMITTER_EMAIL=banger@localhost", "GIT_COMMITTER_DATE=@0 +0000",
	}}, withArgs(quietConfig, "commit-tree", "-m", "banger workspace index", tree)...)
	if err != nil {
		return gitError(err, "record the staged tree of "+repo.Root)
	}
	if err := w.findIntentToAdd(ctx, sg, tree); err != nil {
		return err
	}

	refs, err := w.copyRefs(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(refs, "create %s %s\n", RefHead, repo.Head)
	fmt.Fprintf(refs, "create %s %s\n", RefIndex, strings.TrimSpace(string(commit)))
	if w.Plan.From != "" {
		fmt.Fprintf(refs, "create %s %s\n", RefFrom, w.Plan.From)
	}
	if _, err := sg.runOpts(ctx, system.RunOpts{Stdin: refs}, withArgs(quietConfig, "update-ref", "--stdin")...); err != nil {
		return gitError(err, "copy the refs of "+repo.Root)
	}
	// A detached HEAD makes `git clone` of the bundle work too, which
	// helps whoever debugs one by hand.
	if _, err := sg.run(ctx, withArgs(quietConfig, "update-ref", "--no-deref", "HEAD", repo.Head)...); err != nil {
		return gitError(err, "copy the refs of "+repo.Root)
	}
	return nil
}

func (w *Workspace) scratchGit() gitCmd {
	gitDir := filepath.Join(w.scratch, "git")
	return gitCmd{r: w.r, dir: w.scratch, env: append(append([]string(nil), hostEnv...),
		"GIT_DIR="+gitDir, "GIT_INDEX_FILE="+filepath.Join(gitDir, "index"))}
}

// copyIndex copies the host index, and the shared index files a split
// index refers to, into the scratch GIT_DIR. A missing index is an empty
// one, as for git.
func copyIndex(repo Repo, gitDir string) error {
	data, err := os.ReadFile(repo.IndexFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read the index of %s: %w", repo.Root, err)
	}
	if err == nil {
		if err := os.WriteFile(filepath.Join(gitDir, "index"), data, 0o600); err != nil {
			return fmt.Errorf("copy the index of %s: %w", repo.Root, err)
		}
	}
	shared, err := filepath.Glob(filepath.Join(filepath.Dir(repo.IndexFile), "sharedindex.*"))
	if err != nil {
		return fmt.Errorf("find shared index files: %w", err)
	}
	for _, src := range shared {
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("read %s: %w", src, err)
		}
		if err := os.WriteFile(filepath.Join(gitDir, filepath.Base(src)), data, 0o600); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
	}
	return nil
}

// findIntentToAdd lists index entries the written tree left out: git
// write-tree skips intent-to-add entries, and nothing else.
func (w *Workspace) findIntentToAdd(ctx context.Context, sg gitCmd, tree string) error {
	out, err := sg.run(ctx, withArgs(quietConfig, "ls-tree", "-r", "-z", "--full-tree", "--name-only", tree)...)
	if err != nil {
		return gitError(err, "list the staged tree of "+w.Repo.Root)
	}
	inTree := map[string]bool{}
	for rec := range bytes.SplitSeq(out, []byte{0}) {
		inTree[string(rec)] = true
	}
	for _, e := range w.entries {
		if e.tracked && !inTree[e.path] {
			w.Plan.IntentToAdd = append(w.Plan.IntentToAdd, e.path)
		}
	}
	return nil
}

// copyRefs reads the host's branches, tags and remote-tracking refs and
// returns `update-ref --stdin` lines that recreate them in the scratch
// repository. Symbolic refs go to Plan.Symrefs instead. It also checks
// that the current branch still points at Head: the bundle and the plan
// must describe the same commit.
func (w *Workspace) copyRefs(ctx context.Context) (*bytes.Buffer, error) {
	out, err := w.Repo.git(w.r).run(ctx, withArgs(hostConfig, "for-each-ref",
		"--format=%(objectname)%00%(refname)%00%(symref)", "refs/heads/", "refs/tags/", "refs/remotes/")...)
	if err != nil {
		return nil, gitError(err, "list the refs of "+w.Repo.Root)
	}
	var buf bytes.Buffer
	for line := range strings.SplitSeq(strings.TrimSuffix(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\x00")
		if len(f) != 3 || !isHex(f[0]) {
			return nil, fmt.Errorf("list the refs of %s: unexpected git for-each-ref line %q", w.Repo.Root, line)
		}
		sha, ref, target := f[0], f[1], f[2]
		if target != "" {
			if w.Plan.Symrefs == nil {
				w.Plan.Symrefs = map[string]string{}
			}
			w.Plan.Symrefs[ref] = target
			continue
		}
		if ref == "refs/heads/"+w.Repo.Branch && sha != w.Repo.Head {
			return nil, api.Errorf(api.CodeConflict, "run the command again",
				"branch %s moved while banger was reading %s", w.Repo.Branch, w.Repo.Root)
		}
		fmt.Fprintf(&buf, "create %s %s\n", ref, sha)
	}
	// A symref whose target is not copied would dangle in the guest.
	for ref, target := range w.Plan.Symrefs {
		if !strings.HasPrefix(target, "refs/heads/") && !strings.HasPrefix(target, "refs/tags/") &&
			!strings.HasPrefix(target, "refs/remotes/") {
			delete(w.Plan.Symrefs, ref)
		}
	}
	return &buf, nil
}

// bundleConfig turns off the delta search for objects that have no delta
// yet (loose objects: the user's recent work). Deltas already in packs
// are still reused, so history stays compact, while the search, which
// costs seconds of host CPU per thousand files and competes with the VM's
// emulated vCPUs for the host's cores, is skipped: the bundle streams to
// the guest as fast as git can compress it.
var bundleConfig = []string{"-c", "pack.window=0"}

// WriteBundle streams a git bundle holding every local branch, tag and
// remote-tracking ref of the host, HEAD, and the RefHead, RefIndex and
// RefFrom helpers. The guest fetches it with ApplyPlan.
func (w *Workspace) WriteBundle(ctx context.Context, out io.Writer) error {
	if w.Plan.Mode != ModeBundle || w.scratch == "" {
		return fmt.Errorf("write bundle: workspace is in %s mode or closed", w.Plan.Mode)
	}
	_, err := w.scratchGit().runOpts(ctx, system.RunOpts{Stdout: out},
		withArgs(quietConfig, withArgs(bundleConfig, "bundle", "create", "--quiet", "-", "--all")...)...)
	return gitError(err, "bundle "+w.Repo.Root)
}

// summarize names the first few paths of a list for an error message.
func summarize(paths []string) string {
	const max = 5
	if len(paths) <= max {
		return strings.Join(paths, ", ")
	}
	return strings.Join(paths[:max], ", ") + fmt.Sprintf(" and %d more", len(paths)-max)
}
