package api

import "time"

// WorkspaceRequest is the body of POST /v1/vms/{name}/workspace (and of
// POST /v1/workspace/resolve, which only checks it).
type WorkspaceRequest struct {
	// Path is an absolute host path inside the repository.
	Path string `json:"path"`
	// Mode is "bundle" (default) or "full_copy".
	Mode string `json:"mode,omitempty"`
	// Branch names a guest-only branch created at From (default: the
	// head commit).
	Branch string `json:"branch,omitempty"`
	From   string `json:"from,omitempty"`
	// Force replaces the workspace even while guest processes have
	// their working directory inside it.
	Force bool `json:"force,omitempty"`
}

// Workspace describes the repository last prepared into a VM.
type Workspace struct {
	// Source is the host repository's top directory.
	Source string `json:"source"`
	// Dir is where it lives in the guest.
	Dir  string `json:"dir"`
	Mode string `json:"mode"`
	// Branch is the host's branch ("" for a detached HEAD); Head the
	// commit HEAD was at; Base its merge-base with the upstream (Head
	// without one).
	Branch string `json:"branch,omitempty"`
	Head   string `json:"head,omitempty"`
	Base   string `json:"base,omitempty"`
	// GuestBranch is the guest-only branch of --branch.
	GuestBranch string `json:"guest_branch,omitempty"`
	// GuestHead is the guest's HEAD right after the prepare.
	GuestHead  string    `json:"guest_head,omitempty"`
	PreparedAt time.Time `json:"prepared_at"`
	// Files and Bytes count the working-tree files sent; BundleBytes
	// the history.
	Files       int   `json:"files"`
	Bytes       int64 `json:"bytes"`
	BundleBytes int64 `json:"bundle_bytes,omitempty"`
	// Skipped are paths left out, with the reason (for warnings).
	Skipped []string `json:"skipped,omitempty"`
	// Tips are the commits the host sent; pull leaves out what they
	// reach.
	Tips []string `json:"tips,omitempty"`
}

// ResolvedRepo is what POST /v1/workspace/resolve learned: enough for
// `banger vm run` to refuse a bad repository before it creates a VM.
type ResolvedRepo struct {
	Root   string `json:"root"`
	Branch string `json:"branch,omitempty"`
	Head   string `json:"head,omitempty"`
	Mode   string `json:"mode"`
}

// PullRequest is the body of POST /v1/vms/{name}/workspace/pull.
type PullRequest struct {
	// Path is a host path inside the repository to pull into; empty
	// means the repository the workspace came from.
	Path string `json:"path,omitempty"`
}

// PulledRef is one ref pull created, moved or removed in the host
// repository.
type PulledRef struct {
	// GuestRef is the guest's name (refs/heads/x); HostRef where it
	// landed (refs/remotes/banger/VM/x).
	GuestRef string `json:"guest_ref,omitempty"`
	HostRef  string `json:"host_ref"`
	Old      string `json:"old,omitempty"`
	New      string `json:"new,omitempty"`
	// Log is `git log --oneline` of what arrived: old..new, or for a
	// new ref the commits no host branch has.
	Log []string `json:"log,omitempty"`
}

// PullResult is the answer of a pull.
type PullResult struct {
	VM      string      `json:"vm"`
	Repo    string      `json:"repo"`
	Updated []PulledRef `json:"updated"`
	// Unchanged counts guest refs the host already had as they are.
	Unchanged int `json:"unchanged"`
	// Removed are this VM's banger refs whose guest ref is gone.
	Removed []PulledRef `json:"removed,omitempty"`
	// BundleBytes is how much history came over.
	BundleBytes int64 `json:"bundle_bytes"`
}
