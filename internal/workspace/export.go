package workspace

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// ListRefs returns the branches and tags of the repository in dir (the
// guest side of pull).
func ListRefs(ctx context.Context, r system.Runner, dir string) ([]Ref, error) {
	g := gitCmd{r: r, dir: dir}
	out, err := g.run(ctx, withArgs(quietConfig, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/")...)
	if err != nil {
		return nil, gitError(err, "list refs of "+dir)
	}
	var refs []Ref
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		obj, name, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		refs = append(refs, Ref{Name: name, Object: obj})
	}
	return refs, nil
}

// WriteExportBundle streams a bundle of refs to out, leaving out every
// object reachable from have (commits the host already holds). It writes
// nothing when the host has everything already: git refuses an empty
// bundle, and the refs alone are enough then.
func WriteExportBundle(ctx context.Context, r system.Runner, dir string, refs []Ref, have []string, out io.Writer) error {
	if len(refs) == 0 {
		return nil
	}
	g := gitCmd{r: r, dir: dir}
	args := withArgs(quietConfig, "rev-list", "--objects", "--count")
	// The rev-list count decides emptiness up front: once git bundle
	// has started writing, its "empty bundle" refusal is too late to
	// handle cleanly.
	revs := make([]string, 0, len(refs)+len(have)+1)
	for _, ref := range refs {
		revs = append(revs, ref.Name)
	}
	known := 0
	for _, h := range have {
		if !isHex(h) {
			return fmt.Errorf("export: %q is not an object id", h)
		}
		// An object the guest no longer has (gc) cannot be excluded.
		if _, err := g.run(ctx, withArgs(quietConfig, "cat-file", "-e", h+"^{commit}")...); err == nil {
			if known == 0 {
				revs = append(revs, "--not")
			}
			revs = append(revs, h)
			known++
		}
	}
	count, err := g.line(ctx, append(args, revs...)...)
	if err != nil {
		return gitError(err, "count objects to export")
	}
	if strings.TrimSpace(count) == "0" {
		return nil
	}
	_, err = g.runOpts(ctx, system.RunOpts{Stdout: out},
		withArgs(quietConfig, append([]string{"bundle", "create", "--quiet", "-"}, revs...)...)...)
	return gitError(err, "bundle the guest workspace")
}

const logLimit = 20

// HostRefPrefixes are where pull puts a VM's branches and tags in the
// host repository.
func HostRefPrefixes(vm string) (branches, tags string) {
	return "refs/remotes/banger/" + vm + "/", "refs/banger/" + vm + "/tags/"
}

// maxRefName bounds a guest ref name: git has no limit, but a name is a
// path under .git on the host and a line in banger's output.
const maxRefName = 1024

// GuestRefToHost checks one ref a guest sent during pull and returns the
// host ref it is stored as. The guest is hostile: only branches
// (refs/heads/) and tags (refs/tags/) are taken, the name must obey git's
// ref-name rules (git-check-ref-format(1), checked here in Go so it can be
// fuzzed), and the object must be a full object id of the repository's
// hash (objLen hex digits; 0 when unknown: 40 or 64).
func GuestRefToHost(vm string, ref Ref, objLen int) (string, error) {
	branches, tags := HostRefPrefixes(vm)
	var host, short string
	switch {
	case strings.HasPrefix(ref.Name, "refs/heads/"):
		short = strings.TrimPrefix(ref.Name, "refs/heads/")
		host = branches + short
	case strings.HasPrefix(ref.Name, "refs/tags/"):
		short = strings.TrimPrefix(ref.Name, "refs/tags/")
		host = tags + short
	default:
		return "", fmt.Errorf("guest sent ref %q outside refs/heads and refs/tags", ref.Name)
	}
	if short == "" || len(ref.Name) > maxRefName {
		return "", fmt.Errorf("guest sent unusable ref name %q", ref.Name)
	}
	if err := checkRefName(ref.Name); err != nil {
		return "", fmt.Errorf("guest sent unusable ref name %q: %w", ref.Name, err)
	}
	if err := checkRefName(host); err != nil { // the VM name is part of it
		return "", fmt.Errorf("guest ref %q maps to unusable %q: %w", ref.Name, host, err)
	}
	okLen := len(ref.Object) == objLen || objLen == 0 && (len(ref.Object) == 40 || len(ref.Object) == 64)
	if !isHex(ref.Object) || !okLen {
		return "", fmt.Errorf("guest sent ref %q with bad object %q", ref.Name, ref.Object)
	}
	return host, nil
}

// checkRefName applies git-check-ref-format(1)'s rules to a full ref name.
func checkRefName(name string) error {
	switch {
	case name == "" || name == "@":
		return fmt.Errorf("empty or @")
	case strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//"):
		return fmt.Errorf("empty component")
	case strings.HasSuffix(name, "."):
		return fmt.Errorf("ends with .")
	case strings.Contains(name, ".."):
		return fmt.Errorf("contains ..")
	case strings.Contains(name, "@{"):
		return fmt.Errorf("contains @{")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x20 || c == 0x7f || strings.IndexByte(" ~^:?*[\\", c) >= 0 {
			return fmt.Errorf("contains %q", c)
		}
	}
	for part := range strings.SplitSeq(name, "/") {
		if strings.HasPrefix(part, ".") || strings.HasSuffix(part, ".lock") {
			return fmt.Errorf("component %q starts with . or ends with .lock", part)
		}
	}
	return nil
}

// ImportPull stores what a guest exported in the host repository: the
// bundle's objects (when bundle is not empty) and, for every guest ref,
// a ref under HostRefPrefixes. Nothing else changes: no local branch,
// no index, no working tree. bundleFile may be "" when the guest sent no
// bundle.
func ImportPull(ctx context.Context, r system.Runner, repo Repo, vm string, refs []Ref, bundleFile string) (api.PullResult, error) {
	res := api.PullResult{VM: vm, Repo: repo.Root, Updated: []api.PulledRef{}}
	if err := api.ValidateName("VM", vm); err != nil {
		return res, err
	}
	g := repo.git(r)
	git := func(args ...string) ([]byte, error) {
		return g.run(ctx, withArgs(hostConfig, withArgs(quietConfig, args...)...)...)
	}
	if bundleFile != "" {
		if _, err := git("bundle", "verify", "--quiet", bundleFile); err != nil {
			return res, api.Errorf(api.CodeConflict,
				"the guest's work builds on commits this repository no longer has; pull into the repository the workspace came from",
				"cannot import the guest's commits into %s: %s", repo.Root, firstLine(cmdOutput(err)))
		}
		if _, err := git("bundle", "unbundle", bundleFile); err != nil {
			return res, gitError(err, "store the guest's objects")
		}
	}
	branches, tags := HostRefPrefixes(vm)
	want := map[string]api.PulledRef{}
	for _, ref := range refs {
		host, err := GuestRefToHost(vm, ref, len(repo.Head))
		if err != nil {
			return res, err
		}
		// git's own check as well: the Go rules are fuzzed against it,
		// and this keeps them honest for a git that is stricter still.
		if _, err := r.Run(ctx, "git", "check-ref-format", host); err != nil {
			return res, fmt.Errorf("guest sent unusable ref name %q", ref.Name)
		}
		if prev, dup := want[host]; dup {
			return res, fmt.Errorf("guest sent ref %q twice (%s and %s)", ref.Name, prev.New, ref.Object)
		}
		want[host] = api.PulledRef{GuestRef: ref.Name, HostRef: host, New: ref.Object}
	}
	existing, err := git("for-each-ref", "--format=%(objectname) %(refname)", branches, tags)
	if err != nil {
		return res, gitError(err, "list banger refs")
	}
	old := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(existing)), "\n") {
		if obj, name, ok := strings.Cut(line, " "); ok {
			old[name] = obj
		}
	}
	var tx bytes.Buffer
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := want[name]
		p.Old = old[name]
		if p.Old == p.New {
			res.Unchanged++
			continue
		}
		if _, err := git("cat-file", "-e", p.New); err != nil {
			return res, fmt.Errorf("guest ref %s points at %s, which did not arrive", p.GuestRef, p.New)
		}
		fmt.Fprintf(&tx, "update %s %s\n", name, p.New)
		res.Updated = append(res.Updated, p)
	}
	for name, obj := range old {
		if _, ok := want[name]; !ok {
			fmt.Fprintf(&tx, "delete %s %s\n", name, obj)
			res.Removed = append(res.Removed, api.PulledRef{HostRef: name, Old: obj})
		}
	}
	sort.Slice(res.Removed, func(i, j int) bool { return res.Removed[i].HostRef < res.Removed[j].HostRef })
	if tx.Len() > 0 {
		// One transaction: either every banger ref moves or none.
		if _, err := g.runOpts(ctx, system.RunOpts{Stdin: &tx},
			withArgs(hostConfig, withArgs(quietConfig, "update-ref", "-m", "banger: pull from "+vm, "--stdin")...)...); err != nil {
			return res, gitError(err, "update banger refs")
		}
	}
	for i, p := range res.Updated {
		args := []string{"log", "--oneline", fmt.Sprintf("-n%d", logLimit), p.New}
		if p.Old != "" {
			args = append(args, "^"+p.Old)
		} else {
			args = append(args, "--not", "--branches")
		}
		if out, err := git(args...); err == nil && len(bytes.TrimSpace(out)) > 0 {
			res.Updated[i].Log = strings.Split(strings.TrimSpace(string(out)), "\n")
		}
	}
	return res, nil
}

// Tips are the commits a prepare sent: every ref of the host that the
// bundle carries. Pull passes them back so the guest leaves them out.
func (w *Workspace) Tips(ctx context.Context) ([]string, error) {
	if w.Plan.Mode != ModeBundle || w.scratch == "" {
		return nil, nil
	}
	out, err := w.scratchGit().run(ctx, withArgs(quietConfig, "for-each-ref", "--format=%(objectname)", "refs/heads/", "refs/tags/", "refs/remotes/")...)
	if err != nil {
		return nil, gitError(err, "list bundled refs")
	}
	seen := map[string]bool{w.Plan.Head: true}
	tips := []string{w.Plan.Head}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !seen[line] {
			seen[line] = true
			tips = append(tips, line)
		}
	}
	return tips, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
