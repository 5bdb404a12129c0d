package workspace

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/bangerdev/banger/internal/tarx"
)

// PlanVersion is GuestPlan.Version. An agent refuses a plan with a version
// it does not know rather than half-applying it.
const PlanVersion = 1

// Refs that exist only inside the bundle, to carry objects no host ref
// points at. ApplyPlan deletes them once used.
const (
	// RefHead is the head commit (a detached HEAD may be on no branch).
	RefHead = "refs/banger/head"
	// RefIndex is a commit whose tree is the host's staged state.
	RefIndex = "refs/banger/index"
	// RefFrom is the commit --from resolved to.
	RefFrom = "refs/banger/from"
)

// GuestPlan is everything the guest needs besides the bundle and the
// overlay tar, as data: the daemon sends it as JSON and the agent hands it
// to ApplyPlan. The guest steps, in order (bundle mode):
//
//  1. git init; fetch every ref of the bundle (branches, tags,
//     remote-tracking refs, the refs/banger/* helpers).
//  2. Set user.name/user.email and the upstream configuration; recreate
//     Symrefs.
//  3. Point HEAD at Branch, or detach it at Head (replaying DetachedFrom
//     into the reflog so `git branch` describes it like the host).
//  4. git read-tree IndexTree: the index is now the host's staged state.
//     The working tree is not checked out: the overlay carries every file
//     that exists on the host, so checking out first would only write each
//     file twice.
//  5. Extract the overlay tar; remove Deleted paths (already absent after
//     step 4, so this only matters if the directory was not empty).
//  6. Mark IntentToAdd, SkipWorktree and AssumeUnchanged entries; refresh
//     the index stat data.
//  7. Optionally create NewBranch at From (default: HEAD) and switch to it.
//  8. Delete the refs/banger/* helper refs.
//
// In full_copy mode only Mode, Head, NewBranch and From matter: the tar
// is the whole repository.
type GuestPlan struct {
	Version int    `json:"version"`
	Mode    string `json:"mode"`
	// ObjectFormat is the guest repository's hash: sha1 or sha256.
	ObjectFormat string `json:"object_format,omitempty"`
	// Head is the commit the guest's HEAD ends up at (before NewBranch).
	Head string `json:"head,omitempty"`
	// Base is the merge-base with the upstream (Head without one): what
	// the agent's work is measured against.
	Base string `json:"base,omitempty"`
	// Branch is the branch HEAD is on; empty when Detached.
	Branch       string        `json:"branch,omitempty"`
	Detached     bool          `json:"detached,omitempty"`
	DetachedFrom *DetachedFrom `json:"detached_from,omitempty"`
	Upstream     *Upstream     `json:"upstream,omitempty"`
	// Symrefs maps symbolic refs of the bundle's namespaces (typically
	// refs/remotes/origin/HEAD) to their targets.
	Symrefs map[string]string `json:"symrefs,omitempty"`
	// IndexTree is the tree of the host's index (RefIndex's tree).
	IndexTree string `json:"index_tree,omitempty"`
	// IntentToAdd are paths added with `git add -N`: a tree cannot hold
	// them.
	IntentToAdd PathList `json:"intent_to_add,omitempty"`
	// SkipWorktree and AssumeUnchanged are index flags a tree cannot hold.
	SkipWorktree    PathList `json:"skip_worktree,omitempty"`
	AssumeUnchanged PathList `json:"assume_unchanged,omitempty"`
	// Deleted are tracked paths missing from the host's working tree.
	Deleted PathList `json:"deleted,omitempty"`
	// NewBranch is the guest-only branch (--branch), From its start
	// commit (--from, resolved); empty From means HEAD.
	NewBranch string `json:"new_branch,omitempty"`
	From      string `json:"from,omitempty"`
	UserName  string `json:"user_name,omitempty"`
	UserEmail string `json:"user_email,omitempty"`
}

// Validate checks a plan before the guest acts on it: the plan comes over
// the wire, so every name that reaches git or the filesystem is checked.
// Ref names are also checked with git check-ref-format by ApplyPlan.
func (p GuestPlan) Validate() error {
	if p.Version != PlanVersion {
		return fmt.Errorf("unsupported workspace plan version %d (this agent knows %d): update banger-agent", p.Version, PlanVersion)
	}
	if p.NewBranch != "" {
		if err := checkBranchName(p.NewBranch); err != nil {
			return err
		}
	}
	if p.From != "" && (p.NewBranch == "" || !isHex(p.From)) {
		return fmt.Errorf("invalid plan: from %q needs new_branch and must be a full commit id", p.From)
	}
	switch p.Mode {
	case ModeFullCopy:
		return nil
	case ModeBundle:
	default:
		return fmt.Errorf("invalid plan: unknown mode %q", p.Mode)
	}
	switch p.ObjectFormat {
	case "sha1", "sha256":
	default:
		return fmt.Errorf("invalid plan: unknown object format %q", p.ObjectFormat)
	}
	for name, sha := range map[string]string{"head": p.Head, "base": p.Base, "index_tree": p.IndexTree} {
		if !isHex(sha) {
			return fmt.Errorf("invalid plan: %s %q is not an object id", name, sha)
		}
	}
	if p.Detached != (p.Branch == "") {
		return fmt.Errorf("invalid plan: detached must be set exactly when branch is empty")
	}
	if p.Branch != "" {
		if err := checkBranchName(p.Branch); err != nil {
			return err
		}
	}
	if d := p.DetachedFrom; d != nil && (!isHex(d.Commit) || !validLogField(d.Name)) {
		return fmt.Errorf("invalid plan: detached_from %+v", *d)
	}
	if u := p.Upstream; u != nil {
		if !strings.HasPrefix(u.Ref, "refs/") || !validLogField(u.Remote) || !validLogField(u.Merge) ||
			strings.ContainsAny(u.URL, "\x00\n") {
			return fmt.Errorf("invalid plan: upstream %+v", *u)
		}
		for _, f := range u.Fetch {
			if strings.ContainsAny(f, "\x00\n") {
				return fmt.Errorf("invalid plan: upstream fetch refspec %q", f)
			}
		}
	}
	for ref, target := range p.Symrefs {
		if !strings.HasPrefix(ref, "refs/") || !strings.HasPrefix(target, "refs/") ||
			strings.HasPrefix(ref, "refs/banger/") {
			return fmt.Errorf("invalid plan: symref %q -> %q", ref, target)
		}
	}
	for _, l := range []PathList{p.IntentToAdd, p.SkipWorktree, p.AssumeUnchanged, p.Deleted} {
		for _, name := range l {
			if _, err := repoPath(name); err != nil {
				return fmt.Errorf("invalid plan: %w", err)
			}
		}
	}
	return nil
}

// validLogField: non-empty, one line, not an option.
func validLogField(s string) bool {
	return s != "" && !strings.HasPrefix(s, "-") && !strings.ContainsAny(s, "\x00\n")
}

// repoPath checks a path the guest will create or remove under the
// repository: relative, no "..", nothing inside .git. It is
// tarx.CleanName plus the .git rule, and is fuzzed.
func repoPath(name string) (string, error) {
	clean, err := tarx.CleanName(name)
	if err != nil {
		return "", err
	}
	if clean == "." {
		return "", fmt.Errorf("%w: %q names the repository itself", tarx.ErrUnsafePath, name)
	}
	for part := range strings.SplitSeq(clean, "/") {
		// Case-insensitively, like git's own protection on case-folding
		// filesystems: nothing may land in or replace the git directory.
		if strings.EqualFold(part, ".git") {
			return "", fmt.Errorf("%w: %q is inside .git", tarx.ErrUnsafePath, name)
		}
	}
	return clean, nil
}

// PathList is a list of repository paths that survives JSON whatever
// bytes the names hold: a valid UTF-8 name is a JSON string, any other
// name is {"base64": "..."} (JSON strings cannot carry arbitrary bytes,
// and Linux file names can).
type PathList []string

// MarshalJSON implements json.Marshaler.
func (l PathList) MarshalJSON() ([]byte, error) {
	out := make([]any, len(l))
	for i, s := range l {
		if utf8.ValidString(s) {
			out[i] = s
		} else {
			out[i] = map[string]string{"base64": base64.StdEncoding.EncodeToString([]byte(s))}
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON implements json.Unmarshaler.
func (l *PathList) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	out := make(PathList, 0, len(raw))
	for _, r := range raw {
		var s string
		if err := json.Unmarshal(r, &s); err == nil {
			out = append(out, s)
			continue
		}
		var obj struct {
			Base64 *string `json:"base64"`
		}
		if err := json.Unmarshal(r, &obj); err != nil || obj.Base64 == nil {
			return fmt.Errorf("path list entry %s: want a string or {\"base64\": ...}", r)
		}
		d, err := base64.StdEncoding.DecodeString(*obj.Base64)
		if err != nil {
			return fmt.Errorf("path list entry %s: %w", r, err)
		}
		out = append(out, string(d))
	}
	*l = out
	return nil
}
