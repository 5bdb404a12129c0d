// Package workspace puts the user's git repository, exactly as it is on
// disk, into a VM at /root/repo (`banger vm workspace prepare`).
//
// The host side (Resolve, Prepare, Workspace.WriteBundle,
// Workspace.WriteOverlay, WriteFullCopy) only reads the user's
// repository: refs, index, config and working tree are never written, and
// neither is anything else under .git. Everything it must compute (the
// staged tree, helper refs for the bundle) happens in a scratch GIT_DIR
// that borrows the repository's objects through objects/info/alternates.
//
// The guest side is ApplyPlan: it turns a GuestPlan, a git bundle and an
// overlay tar back into a repository whose `git status`, `git branch`,
// `git tag`, `git log` and files match the host's. It is plain Go plus git
// so that the guest agent and the tests run the very same steps.
//
// Two modes:
//
//   - bundle (default): history travels as a git bundle of the local
//     branches, tags and remote-tracking refs; the working tree travels as
//     a tar of every tracked and untracked-but-not-ignored file; the index
//     travels as a tree object (see Prepare). Ignored files never leave the
//     host.
//   - full_copy: a tar of the whole repository directory including .git,
//     for what bundle mode cannot carry (submodules, conflicts, shallow
//     clones, repositories without commits).
package workspace

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/system"
)

// Modes of Options.Mode.
const (
	ModeBundle   = "bundle"
	ModeFullCopy = "full_copy"
)

// Options are the user's choices for one prepare.
type Options struct {
	// Mode is ModeBundle (also when empty) or ModeFullCopy.
	Mode string `json:"mode,omitempty"`
	// Branch, when set, names a branch created only in the guest, at
	// From (default: the head commit), after the workspace is in place.
	Branch string `json:"branch,omitempty"`
	// From is any revision the host can resolve (branch, tag, remote
	// branch, sha). It is resolved on the host; the guest sees a sha.
	From string `json:"from,omitempty"`
}

// EffectiveMode is Mode with the default applied.
func (o Options) EffectiveMode() string {
	if o.Mode == "" {
		return ModeBundle
	}
	return o.Mode
}

// Validate checks what can be checked without the repository.
func (o Options) Validate() error {
	switch o.Mode {
	case "", ModeBundle, ModeFullCopy:
	default:
		return api.Errorf(api.CodeInvalid, "use --mode bundle (the default) or --mode full_copy",
			"unknown workspace mode %q", o.Mode)
	}
	if o.From != "" && o.Branch == "" {
		return api.Errorf(api.CodeInvalid, "add --branch NAME to name the guest-only branch that starts at --from",
			"--from requires --branch")
	}
	if o.Branch != "" {
		if err := checkBranchName(o.Branch); err != nil {
			return err
		}
	}
	return nil
}

// checkBranchName is the part of the branch-name rules git cannot check
// for us: check-ref-format accepts a leading "-", which every later git
// command would read as an option. Prepare and ApplyPlan also run
// `git check-ref-format`.
func checkBranchName(name string) error {
	if name == "" || strings.HasPrefix(name, "-") || strings.ContainsAny(name, "\x00\n") {
		return api.Errorf(api.CodeInvalid, "pick a name git accepts for a branch, such as agent/fix-tests",
			"invalid branch name %q", name)
	}
	return nil
}

// gitCmd runs git in one directory with a fixed extra environment.
type gitCmd struct {
	r   system.Runner
	dir string
	env []string
}

func (g gitCmd) run(ctx context.Context, args ...string) ([]byte, error) {
	return g.r.RunIn(ctx, system.RunOpts{Dir: g.dir, Env: g.env}, "git", args...)
}

func (g gitCmd) runOpts(ctx context.Context, opts system.RunOpts, args ...string) ([]byte, error) {
	opts.Dir = g.dir
	opts.Env = append(append([]string(nil), g.env...), opts.Env...)
	return g.r.RunIn(ctx, opts, "git", args...)
}

// line runs git and returns its output without the final newline.
func (g gitCmd) line(ctx context.Context, args ...string) (string, error) {
	out, err := g.run(ctx, args...)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(out), "\n"), nil
}

// optionalLine is line for queries whose "no answer" is exit status 1
// (git config --get, rev-parse --verify -q, symbolic-ref -q): that
// returns "", false.
func (g gitCmd) optionalLine(ctx context.Context, args ...string) (string, bool, error) {
	s, err := g.line(ctx, args...)
	if exitCode(err) == 1 {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return s, true, nil
}

func exitCode(err error) int {
	var ce *system.CmdError
	if errors.As(err, &ce) {
		return ce.ExitCode
	}
	return -1
}

func cmdOutput(err error) string {
	var ce *system.CmdError
	if errors.As(err, &ce) {
		return ce.Output
	}
	return ""
}

// hostEnv applies to every git command run against the user's
// repository. GIT_OPTIONAL_LOCKS=0 stops the opportunistic index refresh
// some read commands do, so reading never rewrites .git/index.
var hostEnv = []string{"GIT_OPTIONAL_LOCKS=0", "GIT_TERMINAL_PROMPT=0"}

// hostConfig is passed as -c to every host git command: a configured
// fsmonitor would otherwise start a daemon (and create its socket in .git)
// or run a hook command from the repository's config.
var hostConfig = []string{"-c", "core.fsmonitor=false"}

// quietConfig keeps git commands banger runs in scratch or guest
// repositories from running hooks (a global core.hooksPath applies there
// too) or starting background maintenance.
var quietConfig = []string{"-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0", "-c", "maintenance.auto=false"}

func withArgs(prefix []string, args ...string) []string {
	return append(append([]string(nil), prefix...), args...)
}

// gitError turns the failures a user can fix into *api.Error and wraps
// the rest with what banger was doing.
func gitError(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, system.ErrNotFound) {
		return api.Errorf(api.CodeUnavailable, "install git (apt-get install git) and try again", "git is not installed")
	}
	out := cmdOutput(err)
	if strings.Contains(out, "dubious ownership") {
		return api.Errorf(api.CodeInvalid,
			"run banger as the user who owns the repository, or mark it safe with git config --global --add safe.directory PATH",
			"git refuses to read this repository because another user owns it")
	}
	return fmt.Errorf("%s: %w", what, err)
}
