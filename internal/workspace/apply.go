package workspace

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/tarx"
)

// Streams are what the host sends after the plan, in this order.
type Streams struct {
	// Bundle (bundle mode) is Workspace.WriteBundle's output.
	Bundle io.Reader
	// PackIndex (bundle mode) is the .idx of the bundle's pack
	// (Workspace.WritePackIndex).
	PackIndex io.Reader
	// Overlay is Workspace.WriteOverlay's tar (bundle mode) or
	// WriteFullCopy's (full_copy).
	Overlay io.Reader
	// Entries (bundle mode) is Workspace.WriteEntries' output.
	Entries io.Reader
}

// ApplyPlan builds the repository described by plan in dir (the guest's
// /root/repo), which must be missing or empty, from the streams. The
// steps are listed on GuestPlan.
//
// Nothing from the streams is trusted: the plan is validated, tar entries
// that would leave dir (absolute, "..", below a symlink of the stream) or,
// in bundle mode, touch .git are refused, and writes go through os.Root.
// On failure dir is left as it is for inspection; the caller removes it
// before trying again.
//
// progress, when not nil, is called with each stage (StageTransfer,
// StageClone, StageOverlay, StageBranch) as it begins, so the host can
// show where a slow prepare is.
func ApplyPlan(ctx context.Context, r system.Runner, dir string, plan GuestPlan, s Streams, progress func(stage string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	if err := plan.Validate(); err != nil {
		return err
	}
	if s.Overlay == nil || (plan.Mode == ModeBundle && (s.Bundle == nil || s.PackIndex == nil || s.Entries == nil)) {
		return fmt.Errorf("apply workspace plan: missing stream")
	}
	if err := ensureEmptyDir(dir); err != nil {
		return err
	}
	g := gitCmd{r: r, dir: dir}
	if plan.Mode == ModeFullCopy {
		progress(StageTransfer)
		if _, _, err := extractTree(ctx, s.Overlay, dir, true); err != nil {
			return fmt.Errorf("extract the repository copy: %w", err)
		}
		// The copied index holds the host's stat data: refresh it now
		// so the first git status in the guest is not a full re-hash.
		// -q: entries that differ stay modified; --unmerged: a full
		// copy may be mid-merge.
		if _, err := g.run(ctx, withArgs(quietConfig, "update-index", "-q", "--unmerged", "--refresh")...); err != nil {
			return gitError(err, "refresh the index")
		}
	} else if err := applyBundle(ctx, g, dir, plan, s, progress); err != nil {
		return err
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

func applyBundle(ctx context.Context, g gitCmd, dir string, plan GuestPlan, s Streams, progress func(string)) error {
	if err := checkPlanRefs(ctx, g.r, plan); err != nil {
		return err
	}
	if _, err := g.run(ctx, withArgs(quietConfig, "init", "--quiet", "--object-format="+plan.ObjectFormat, ".")...); err != nil {
		return gitError(err, "create the repository")
	}
	gitDir := filepath.Join(dir, ".git")
	progress(StageTransfer)
	br := bufio.NewReaderSize(s.Bundle, 256<<10)
	hdr, err := readBundleHeader(br)
	if err != nil {
		return err
	}
	if hdr.objectFormat != plan.ObjectFormat {
		return fmt.Errorf("bundle is %s, the plan says %s", hdr.objectFormat, plan.ObjectFormat)
	}
	if len(hdr.prerequisites) > 0 {
		return fmt.Errorf("bundle needs %d commits the new repository cannot have", len(hdr.prerequisites))
	}
	if err := installPack(br, s.PackIndex, gitDir, plan.ObjectFormat); err != nil {
		return err
	}
	progress(StageClone)
	if err := createRefs(ctx, g, hdr.refs); err != nil {
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

	// The working tree comes from the overlay, not from a checkout: it
	// carries every file the host has, written once. The index is then
	// written from the host's entries with the stat data of the files
	// just written (see index.go), so nothing is hashed again.
	progress(StageOverlay)
	stats, _, err := extractTree(ctx, s.Overlay, dir, false)
	if err != nil {
		return fmt.Errorf("extract the working tree: %w", err)
	}
	entries, err := readEntries(s.Entries, hashLen(plan.ObjectFormat))
	if err != nil {
		return err
	}
	return writeIndexFile(gitDir, plan.ObjectFormat, entries, stats)
}

// createRefs creates the bundle's refs (all but HEAD) in one
// transaction; git checks that each object exists, which also proves the
// pack and its index belong together.
func createRefs(ctx context.Context, g gitCmd, refs []Ref) error {
	var tx bytes.Buffer
	for _, ref := range refs {
		if ref.Name == "HEAD" {
			continue
		}
		fmt.Fprintf(&tx, "create %s %s\n", ref.Name, ref.Object)
	}
	_, err := g.runOpts(ctx, system.RunOpts{Stdin: &tx}, withArgs(quietConfig, "update-ref", "--stdin")...)
	return gitError(err, "create the bundle's refs")
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
