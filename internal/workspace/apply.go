package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/tarx"
)

// ApplyPlan builds the repository described by plan in dir (the guest's
// /root/repo), which must be missing or empty. In bundle mode it needs the
// bundle (Workspace.WriteBundle) and the overlay (Workspace.WriteOverlay);
// in full_copy mode only the overlay (WriteFullCopy) and bundle may be
// nil. The steps are listed on GuestPlan.
//
// Nothing from the streams is trusted: the plan is validated, tar entries
// that would leave dir (absolute, "..", below a symlink of the stream) or,
// in bundle mode, touch .git are refused, and extraction goes through
// tarx's os.Root confinement. On failure dir is left as it is for
// inspection; the caller removes it before trying again.
//
// progress, when not nil, is called with each stage (StageTransfer,
// StageClone, StageOverlay, StageBranch) as it begins, so the host can
// show where a slow prepare is.
func ApplyPlan(ctx context.Context, r system.Runner, dir string, plan GuestPlan, bundle, overlay io.Reader, progress func(stage string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	if err := plan.Validate(); err != nil {
		return err
	}
	if overlay == nil || (plan.Mode == ModeBundle && bundle == nil) {
		return fmt.Errorf("apply workspace plan: missing bundle or overlay stream")
	}
	if err := ensureEmptyDir(dir); err != nil {
		return err
	}
	g := gitCmd{r: r, dir: dir}
	if plan.Mode == ModeFullCopy {
		progress(StageTransfer)
		if _, err := extractOverlay(ctx, overlay, dir, true); err != nil {
			return fmt.Errorf("extract the repository copy: %w", err)
		}
	} else if err := applyBundle(ctx, g, dir, plan, bundle, overlay, progress); err != nil {
		return err
	}
	// Stat data in the index belongs to the host's files (or, after
	// read-tree, is empty): refresh it now so the first git status in the
	// guest is not a full re-hash. -q: entries that differ stay modified;
	// --unmerged: a full copy may be mid-merge.
	if _, err := g.run(ctx, withArgs(quietConfig, "update-index", "-q", "--unmerged", "--refresh")...); err != nil {
		return gitError(err, "refresh the index")
	}
	if plan.NewBranch != "" {
		progress(StageBranch)
		if err := newBranch(ctx, g, plan); err != nil {
			return err
		}
	}
	if plan.Mode == ModeBundle {
		return deleteHelperRefs(ctx, g)
	}
	return nil
}

func applyBundle(ctx context.Context, g gitCmd, dir string, plan GuestPlan, bundle, overlay io.Reader, progress func(string)) error {
	if err := checkPlanRefs(ctx, g.r, plan); err != nil {
		return err
	}
	if _, err := g.run(ctx, withArgs(quietConfig, "init", "--quiet", "--object-format="+plan.ObjectFormat, ".")...); err != nil {
		return gitError(err, "create the repository")
	}
	progress(StageTransfer)
	spooled, err := spoolBundle(dir, bundle)
	if err != nil {
		return err
	}
	defer os.Remove(spooled)
	progress(StageClone)
	if err := fetchBundle(ctx, g, spooled); err != nil {
		return err
	}
	run := func(what string, args ...string) error {
		_, err := g.run(ctx, withArgs(quietConfig, args...)...)
		return gitError(err, what)
	}
	if err := verifyObject(ctx, g, RefHead, plan.Head); err != nil {
		return err
	}
	if err := verifyObject(ctx, g, RefIndex+"^{tree}", plan.IndexTree); err != nil {
		return err
	}
	for key, val := range map[string]string{"user.name": plan.UserName, "user.email": plan.UserEmail} {
		if val != "" {
			if err := run("set "+key, "config", key, val); err != nil {
				return err
			}
		}
	}
	for ref, target := range plan.Symrefs {
		if err := run("create symbolic ref "+ref, "symbolic-ref", ref, target); err != nil {
			return err
		}
	}
	if u := plan.Upstream; u != nil && plan.Branch != "" {
		if u.Remote != "." {
			if u.URL != "" {
				if err := run("configure the upstream", "config", "remote."+u.Remote+".url", u.URL); err != nil {
					return err
				}
			}
			for _, f := range u.Fetch {
				if err := run("configure the upstream", "config", "--add", "remote."+u.Remote+".fetch", f); err != nil {
					return err
				}
			}
		}
		if err := run("configure the upstream", "config", "branch."+plan.Branch+".remote", u.Remote); err != nil {
			return err
		}
		if err := run("configure the upstream", "config", "branch."+plan.Branch+".merge", u.Merge); err != nil {
			return err
		}
	}

	if err := setHead(ctx, g, plan); err != nil {
		return err
	}
	// The index before the files: read-tree without -u writes only the
	// index, and the overlay then supplies every file that exists on the
	// host. A tracked file the overlay lacks is thereby deleted.
	if err := run("restore the index", "read-tree", plan.IndexTree); err != nil {
		return err
	}
	progress(StageOverlay)
	if _, err := extractOverlay(ctx, overlay, dir, false); err != nil {
		return fmt.Errorf("extract the working tree: %w", err)
	}
	if err := removePaths(dir, plan.Deleted); err != nil {
		return err
	}
	return restoreIndexFlags(ctx, g, dir, plan)
}

// checkPlanRefs runs git check-ref-format on every ref name of the plan
// before any of them reaches a git command.
func checkPlanRefs(ctx context.Context, r system.Runner, plan GuestPlan) error {
	refs := []string{}
	if plan.Branch != "" {
		refs = append(refs, "refs/heads/"+plan.Branch)
	}
	if plan.NewBranch != "" {
		refs = append(refs, "refs/heads/"+plan.NewBranch)
	}
	for ref, target := range plan.Symrefs {
		refs = append(refs, ref, target)
	}
	if u := plan.Upstream; u != nil {
		refs = append(refs, u.Ref)
	}
	for _, ref := range refs {
		if _, err := r.Run(ctx, "git", "check-ref-format", ref); err != nil {
			if exitCode(err) == 1 {
				return fmt.Errorf("invalid plan: bad ref name %q", ref)
			}
			return gitError(err, "check ref name "+ref)
		}
	}
	return nil
}

// spoolBundle writes the bundle stream into .git: git reads a bundle
// from a file. It returns the file's path.
func spoolBundle(dir string, bundle io.Reader) (string, error) {
	f, err := os.CreateTemp(filepath.Join(dir, ".git"), "banger-*.bundle")
	if err != nil {
		return "", fmt.Errorf("spool the bundle: %w", err)
	}
	_, err = io.Copy(f, bundle)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("spool the bundle: %w", err)
	}
	return f.Name(), nil
}

// fetchBundle fetches every ref of the bundle file into the same name.
func fetchBundle(ctx context.Context, g gitCmd, file string) error {
	// --update-head-ok: the fresh repository's unborn HEAD names a branch
	// the bundle may well carry.
	_, err := g.run(ctx, withArgs(quietConfig, "fetch", "--quiet", "--no-tags", "--update-head-ok",
		"--no-write-fetch-head", file, "+refs/*:refs/*")...)
	return gitError(err, "fetch the bundle")
}

func verifyObject(ctx context.Context, g gitCmd, rev, want string) error {
	got, err := g.line(ctx, withArgs(quietConfig, "rev-parse", "--verify", "--end-of-options", rev)...)
	if err != nil {
		return gitError(err, "look up "+rev+" in the bundle")
	}
	if got != want {
		return fmt.Errorf("bundle and plan disagree: %s is %s, the plan says %s", rev, got, want)
	}
	return nil
}

// setHead points HEAD at the host's branch, or detaches it at the head
// commit. For a detached HEAD the host's last "checkout: moving from ...
// to NAME" is replayed into the reflog, because that is where `git branch`
// and `git status` get "HEAD detached at/from NAME" from.
func setHead(ctx context.Context, g gitCmd, plan GuestPlan) error {
	run := func(args ...string) error {
		_, err := g.run(ctx, withArgs(quietConfig, args...)...)
		return gitError(err, "set HEAD")
	}
	if !plan.Detached {
		if err := run("symbolic-ref", "HEAD", "refs/heads/"+plan.Branch); err != nil {
			return err
		}
		return verifyObject(ctx, g, "HEAD", plan.Head)
	}
	if d := plan.DetachedFrom; d != nil {
		if _, err := g.run(ctx, withArgs(quietConfig, "cat-file", "-e", d.Commit+"^{commit}")...); err == nil {
			if err := run("update-ref", "--no-deref", "-m", "checkout: moving from banger to "+d.Name, "HEAD", d.Commit); err != nil {
				return err
			}
			if d.Commit == plan.Head {
				return nil
			}
		}
	}
	return run("update-ref", "--no-deref", "-m", "banger: workspace head", "HEAD", plan.Head)
}

// restoreIndexFlags re-adds what a tree cannot hold: intent-to-add
// entries and the skip-worktree and assume-unchanged bits.
func restoreIndexFlags(ctx context.Context, g gitCmd, dir string, plan GuestPlan) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	// git add needs the file; an intent-to-add path deleted on the host
	// stays out of the index.
	var ita []string
	for _, p := range plan.IntentToAdd {
		if _, err := newTreeStat(root).lstat(p); err == nil {
			ita = append(ita, p)
		}
	}
	steps := []struct {
		what  string
		paths []string
		args  []string
	}{
		// --literal-pathspecs: these are file names, not patterns;
		// --force: the file may match a guest .gitignore.
		{"mark intent-to-add files", ita, []string{"--literal-pathspecs", "add", "--force", "--intent-to-add",
			"--pathspec-from-file=-", "--pathspec-file-nul"}},
		{"mark skip-worktree files", plan.SkipWorktree, []string{"update-index", "--skip-worktree", "-z", "--stdin"}},
		{"mark assume-unchanged files", plan.AssumeUnchanged, []string{"update-index", "--assume-unchanged", "-z", "--stdin"}},
	}
	for _, s := range steps {
		if len(s.paths) == 0 {
			continue
		}
		stdin := strings.Join(s.paths, "\x00") + "\x00"
		if _, err := g.runOpts(ctx, system.RunOpts{Stdin: strings.NewReader(stdin)}, withArgs(quietConfig, s.args...)...); err != nil {
			return gitError(err, s.what)
		}
	}
	return nil
}

func newBranch(ctx context.Context, g gitCmd, plan GuestPlan) error {
	args := withArgs(quietConfig, "checkout", "-q", "-b", plan.NewBranch)
	if plan.From != "" {
		args = append(args, plan.From)
	}
	_, err := g.run(ctx, args...)
	if err != nil && strings.Contains(cmdOutput(err), "would be overwritten") {
		return api.Errorf(api.CodeConflict,
			"commit or stash those changes on the host first, or drop --from to branch at the current commit",
			"cannot start branch %s at %s: uncommitted changes conflict with it", plan.NewBranch, plan.From)
	}
	return gitError(err, "create branch "+plan.NewBranch)
}

func deleteHelperRefs(ctx context.Context, g gitCmd) error {
	out, err := g.run(ctx, withArgs(quietConfig, "for-each-ref", "--format=delete %(refname)", "refs/banger/")...)
	if err != nil {
		return gitError(err, "list helper refs")
	}
	if len(out) == 0 {
		return nil
	}
	_, err = g.runOpts(ctx, system.RunOpts{Stdin: bytes.NewReader(out)}, withArgs(quietConfig, "update-ref", "--stdin")...)
	return gitError(err, "delete helper refs")
}

// ensureEmptyDir creates dir, or checks that it is empty: ApplyPlan
// never merges into an existing tree.
func ensureEmptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	if len(ents) > 0 {
		return api.Errorf(api.CodeConflict, "remove it first, or prepare the workspace into a new VM",
			"%s is not empty", dir)
	}
	return nil
}

// removePaths removes plan.Deleted entries that exist as files or
// symlinks, confined to dir and never through a symlinked parent.
func removePaths(dir string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	lst := newTreeStat(root)
	for _, p := range paths {
		name, err := repoPath(p)
		if err != nil {
			return err
		}
		fi, err := lst.lstat(name)
		if isGone(err) || err == nil && fi.IsDir() {
			continue
		}
		if err != nil {
			return fmt.Errorf("inspect %s: %w", name, err)
		}
		if err := root.Remove(name); err != nil && !isGone(err) {
			return fmt.Errorf("remove %s: %w", name, err)
		}
	}
	return nil
}

// errExtractDone stops the tar filter when tarx.Extract returned before
// reading the whole stream.
var errExtractDone = errors.New("extraction finished")

// extractOverlay checks every entry of a tar stream (checkEntry) and
// hands the entries that pass to tarx.Extract, through a pipe: tarx keeps
// owning the confined writes, and a refused entry stops the stream before
// anything after it is written.
func extractOverlay(ctx context.Context, r io.Reader, dir string, allowGit bool) (tarx.Stats, error) {
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := filterTar(r, pw, allowGit)
		pw.CloseWithError(err)
		errc <- err
	}()
	st, err := tarx.Extract(ctx, pr, dir, 0)
	pr.CloseWithError(errExtractDone)
	if ferr := <-errc; ferr != nil && !errors.Is(ferr, errExtractDone) {
		return st, ferr
	}
	return st, err
}

func filterTar(r io.Reader, w io.Writer, allowGit bool) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	links := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name, err := checkEntry(hdr.Name, hdr.Typeflag, links, allowGit)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		out := &tar.Header{Name: name, Typeflag: hdr.Typeflag, Mode: hdr.Mode, Linkname: hdr.Linkname,
			ModTime: hdr.ModTime, Format: tar.FormatPAX}
		if hdr.Typeflag == tar.TypeReg {
			out.Size = hdr.Size
		}
		if err := tw.WriteHeader(out); err != nil {
			return fmt.Errorf("tar entry %q: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return fmt.Errorf("tar entry %q: %w", name, err)
			}
		}
	}
}

// checkEntry is the path check of ApplyPlan's extraction, and is fuzzed.
// It returns the cleaned name of an acceptable entry, "." for the
// directory itself (full copies only), or an error wrapping
// tarx.ErrUnsafePath or tarx.ErrUnsupported. links holds the symlinks seen
// so far in the stream and is updated: nothing may be written below one,
// since os.Root would follow a link that stays inside dir, writing the
// file somewhere other than where git will look for it.
func checkEntry(name string, typ byte, links map[string]bool, allowGit bool) (string, error) {
	switch typ {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
	default:
		return "", fmt.Errorf("%w: %q has type %q", tarx.ErrUnsupported, name, string(typ))
	}
	var clean string
	var err error
	if allowGit {
		clean, err = tarx.CleanName(name)
	} else {
		clean, err = repoPath(name)
	}
	if err != nil {
		return "", err
	}
	if clean == "." {
		if typ != tar.TypeDir {
			return "", fmt.Errorf("%w: %q names the target directory itself", tarx.ErrUnsafePath, name)
		}
		return clean, nil
	}
	for dir := path.Dir(clean); dir != "."; dir = path.Dir(dir) {
		if links[dir] {
			return "", fmt.Errorf("%w: %q is below the symlink %q", tarx.ErrUnsafePath, name, dir)
		}
	}
	if typ == tar.TypeDir && links[clean] {
		return "", fmt.Errorf("%w: directory %q would replace a symlink", tarx.ErrUnsafePath, name)
	}
	if typ == tar.TypeSymlink {
		links[clean] = true
	}
	return clean, nil
}
