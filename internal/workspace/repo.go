package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// Repo is what Resolve learned about the repository enclosing a path.
type Repo struct {
	// Root is the top of the working tree as git reports it (symlinks
	// resolved).
	Root string `json:"root"`
	// GitDir is this working tree's git directory; CommonDir is where
	// refs, config and objects live. They differ in a linked worktree
	// (git worktree add).
	GitDir    string `json:"git_dir"`
	CommonDir string `json:"common_dir"`
	// IndexFile and ObjectsDir are absolute.
	IndexFile  string `json:"index_file"`
	ObjectsDir string `json:"objects_dir"`
	// ObjectFormat is "sha1" or "sha256".
	ObjectFormat string `json:"object_format"`
	// Head is the commit HEAD points at; "" when the current branch has
	// no commit yet.
	Head string `json:"head,omitempty"`
	// Branch is the short name of the checked-out branch; "" when HEAD
	// is detached.
	Branch string `json:"branch,omitempty"`
	// DetachedFrom is what `git branch` names a detached HEAD after
	// (read from the HEAD reflog); nil when there is nothing to show.
	DetachedFrom *DetachedFrom `json:"detached_from,omitempty"`
	// Upstream is the current branch's upstream when it exists.
	Upstream *Upstream `json:"upstream,omitempty"`
	// Base is the merge-base of Head and the upstream, or Head when
	// there is no upstream (or no common history).
	Base string `json:"base,omitempty"`
	// UserName and UserEmail are the effective user.name/user.email.
	UserName  string `json:"user_name,omitempty"`
	UserEmail string `json:"user_email,omitempty"`
	// HasSubmodules: a .gitmodules file or a gitlink in the index.
	HasSubmodules bool `json:"has_submodules,omitempty"`
	// Shallow: the history is cut (git clone --depth).
	Shallow bool `json:"shallow,omitempty"`
}

// DetachedFrom is the last "checkout: moving from X to Name" of the HEAD
// reflog: git branch shows "HEAD detached at Name" when HEAD is still at
// Commit, "detached from Name" otherwise.
type DetachedFrom struct {
	Name   string `json:"name"`
	Commit string `json:"commit"`
}

// Upstream is a branch's upstream and the configuration that makes git
// find it, so the guest's `git status` reports the same ahead/behind.
type Upstream struct {
	// Ref is the tracking ref, such as refs/remotes/origin/main.
	Ref string `json:"ref"`
	// Remote and Merge are branch.<name>.remote and .merge; Remote is
	// "." for a local upstream.
	Remote string `json:"remote"`
	Merge  string `json:"merge"`
	// URL is remote.<remote>.url with any credentials removed: the guest
	// runs agents that should not see the user's tokens.
	URL string `json:"url,omitempty"`
	// Fetch holds remote.<remote>.fetch refspecs.
	Fetch []string `json:"fetch,omitempty"`
}

// Resolve finds the git repository enclosing path (a directory or a file)
// and reads what a workspace needs from it. It rejects a path outside any
// repository, a bare repository and a path inside a .git directory;
// mode-specific checks (submodules, shallow history, ...) are Prepare's.
// It only reads.
func Resolve(ctx context.Context, r system.Runner, path string) (Repo, error) {
	if path == "" {
		path = "."
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return Repo{}, fmt.Errorf("resolve %s: %w", path, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return Repo{}, api.Errorf(api.CodeInvalid, "pass the path of a directory inside a git working tree",
			"%s does not exist", abs)
	case err != nil:
		return Repo{}, fmt.Errorf("inspect %s: %w", abs, err)
	}
	dir := abs
	if !fi.IsDir() {
		dir = filepath.Dir(abs)
	}

	g := gitCmd{r: r, dir: dir, env: hostEnv}
	out, err := g.run(ctx, withArgs(hostConfig, "rev-parse", "--is-bare-repository", "--is-inside-git-dir",
		"--is-shallow-repository", "--show-object-format")...)
	if err != nil {
		if strings.Contains(cmdOutput(err), "not a git repository") {
			return Repo{}, api.Errorf(api.CodeInvalid,
				"run it from inside a git working tree or pass one's path (git init makes a new repository)",
				"%s is not inside a git repository", abs)
		}
		return Repo{}, gitError(err, "find the git repository of "+abs)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 {
		return Repo{}, fmt.Errorf("find the git repository of %s: unexpected git rev-parse output %q", abs, out)
	}
	if f[0] == "true" {
		return Repo{}, api.Errorf(api.CodeInvalid,
			"banger needs a working tree: clone it (git clone PATH DIR) and pass the clone",
			"%s is a bare git repository", abs)
	}
	if f[1] == "true" {
		return Repo{}, api.Errorf(api.CodeInvalid, "pass the working tree's path, not a path inside its .git directory",
			"%s is inside a .git directory", abs)
	}
	repo := Repo{Shallow: f[2] == "true", ObjectFormat: f[3]}

	out, err = g.run(ctx, withArgs(hostConfig, "rev-parse", "--show-toplevel", "--absolute-git-dir",
		"--path-format=absolute", "--git-common-dir", "--git-path", "index", "--git-path", "objects")...)
	if err != nil {
		return Repo{}, gitError(err, "find the git repository of "+abs)
	}
	paths := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(paths) != 5 {
		return Repo{}, api.Errorf(api.CodeInvalid, "move the repository to a path without newlines",
			"cannot handle the repository of %s: its path contains a newline", abs)
	}
	repo.Root, repo.GitDir, repo.CommonDir, repo.IndexFile, repo.ObjectsDir = paths[0], paths[1], paths[2], paths[3], paths[4]
	if err := repo.readState(ctx, r); err != nil {
		return Repo{}, err
	}
	return repo, nil
}

// readState fills the commit, branch, upstream, identity and submodule
// fields.
func (repo *Repo) readState(ctx context.Context, r system.Runner) error {
	g := repo.git(r)
	q := func(args ...string) (string, bool, error) {
		s, ok, err := g.optionalLine(ctx, withArgs(hostConfig, args...)...)
		return s, ok, gitError(err, "read "+repo.Root)
	}
	var err error
	if repo.Head, _, err = q("rev-parse", "-q", "--verify", "HEAD^{commit}"); err != nil {
		return err
	}
	ref, _, err := q("symbolic-ref", "-q", "HEAD")
	if err != nil {
		return err
	}
	repo.Branch = strings.TrimPrefix(ref, "refs/heads/")
	if repo.UserName, _, err = q("config", "--get", "user.name"); err != nil {
		return err
	}
	if repo.UserEmail, _, err = q("config", "--get", "user.email"); err != nil {
		return err
	}

	if repo.Head != "" && repo.Branch == "" {
		repo.DetachedFrom = repo.readDetachedFrom(ctx, g)
	}
	repo.Base = repo.Head
	if repo.Head != "" && repo.Branch != "" {
		if err := repo.readUpstream(ctx, g); err != nil {
			return err
		}
	}

	if _, err := os.Lstat(filepath.Join(repo.Root, ".gitmodules")); err == nil {
		repo.HasSubmodules = true
	} else {
		// A gitlink without .gitmodules (a repository added with
		// git add) is a submodule too as far as a bundle is concerned.
		out, err := g.run(ctx, withArgs(hostConfig, "ls-files", "-z", "--stage")...)
		if err != nil {
			return gitError(err, "list the index of "+repo.Root)
		}
		for rec := range bytes.SplitSeq(out, []byte{0}) {
			if bytes.HasPrefix(rec, []byte("160000 ")) {
				repo.HasSubmodules = true
				break
			}
		}
	}
	return nil
}

// readDetachedFrom reads the HEAD reflog the way `git branch` does. A
// missing reflog is not an error: git then shows "(no branch)", and so
// will the guest.
func (repo *Repo) readDetachedFrom(ctx context.Context, g gitCmd) *DetachedFrom {
	out, err := g.run(ctx, withArgs(hostConfig, "log", "-g", "-1", "--grep-reflog=^checkout: moving from ",
		"--format=%H%x00%gs", "HEAD")...)
	if err != nil {
		return nil
	}
	sha, subject, ok := strings.Cut(strings.TrimSuffix(string(out), "\n"), "\x00")
	if !ok {
		return nil
	}
	i := strings.LastIndex(subject, " to ")
	if i < 0 || !isHex(sha) {
		return nil
	}
	return &DetachedFrom{Name: subject[i+len(" to "):], Commit: sha}
}

func (repo *Repo) readUpstream(ctx context.Context, g gitCmd) error {
	ref, err := g.line(ctx, withArgs(hostConfig, "rev-parse", "--symbolic-full-name", "@{upstream}")...)
	if err != nil {
		// No upstream configured, or it is gone: Base stays Head.
		if exitCode(err) == 128 {
			return nil
		}
		return gitError(err, "find the upstream of "+repo.Branch)
	}
	if ref == "" {
		return nil
	}
	up := &Upstream{Ref: ref}
	q := func(args ...string) (string, error) {
		s, _, err := g.optionalLine(ctx, withArgs(hostConfig, args...)...)
		return s, gitError(err, "read the upstream of "+repo.Branch)
	}
	if up.Remote, err = q("config", "--get", "branch."+repo.Branch+".remote"); err != nil {
		return err
	}
	if up.Merge, err = q("config", "--get", "branch."+repo.Branch+".merge"); err != nil {
		return err
	}
	if up.Remote != "" && up.Remote != "." {
		u, err := q("config", "--get", "remote."+up.Remote+".url")
		if err != nil {
			return err
		}
		up.URL = stripCredentials(u)
		fetch, err := q("config", "--get-all", "remote."+up.Remote+".fetch")
		if err != nil {
			return err
		}
		if fetch != "" {
			up.Fetch = strings.Split(fetch, "\n")
		}
	}
	repo.Upstream = up

	base, ok, err := g.optionalLine(ctx, withArgs(hostConfig, "merge-base", repo.Head, ref)...)
	if err != nil {
		return gitError(err, "find the merge-base of HEAD and "+ref)
	}
	if ok && base != "" {
		repo.Base = base
	}
	return nil
}

// git runs commands at the top of the working tree, so that paths git
// prints are relative to Root whatever path Resolve was given.
func (repo *Repo) git(r system.Runner) gitCmd {
	return gitCmd{r: r, dir: repo.Root, env: hostEnv}
}

// stripCredentials drops a password, and for http(s) the whole user part
// (tokens often sit there alone), from a remote URL. scp-like addresses
// (git@host:path) carry no secret and are kept.
func stripCredentials(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil || u.Scheme == "" {
		return raw
	}
	switch u.Scheme {
	case "http", "https":
		u.User = nil
	default:
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

func isHex(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
