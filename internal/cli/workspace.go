package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bangerdev/banger/api"
)

// workspaceFlags are the prepare options `vm workspace prepare` and
// `vm run` share.
func addWorkspaceFlags(f *pflag.FlagSet, req *api.WorkspaceRequest) {
	f.StringVar(&req.Mode, "mode", "", "bundle (default: history as a git bundle plus the working tree) or full_copy (the whole directory, .git and submodules included)")
	f.StringVar(&req.Branch, "branch", "", "create this branch in the guest only and check it out")
	f.StringVar(&req.From, "from", "", "start --branch at this host branch, tag or commit (default: HEAD)")
}

// absPath makes a command-line path absolute: the daemon does not share
// the CLI's working directory.
func absPath(a []string, i int) (string, error) {
	p := "."
	if len(a) > i {
		p = a[i]
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	return abs, nil
}

func newVMWorkspaceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "workspace", Short: "Put a git repository at /root/repo in a VM, and get the work back"}
	cmd.AddCommand(newWorkspacePrepareCmd(g), newWorkspacePullCmd(g))
	return cmd
}

func newWorkspacePrepareCmd(g *globals) *cobra.Command {
	var req api.WorkspaceRequest
	cmd := &cobra.Command{
		Use:   "prepare NAME [PATH]",
		Short: "Copy the repository at PATH (default: here) to /root/repo in VM NAME, replacing what is there",
		Long: `Copies the git repository enclosing PATH into the VM at /root/repo, exactly as it
is on disk: history as a git bundle (local branches and tags), then the working tree
(tracked files and untracked files that are not ignored), with the index state
reproduced. The host repository is only read. An existing /root/repo is replaced
atomically; a failed prepare leaves it as it was.`,
		Args: args(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			var err error
			if req.Path, err = absPath(a, 1); err != nil {
				return err
			}
			ws, err := g.prepare(cmd.Context(), a[0], req)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(ws)
			}
			g.printWorkspace(a[0], ws)
			return nil
		},
	}
	addWorkspaceFlags(cmd.Flags(), &req)
	cmd.Flags().BoolVar(&req.Force, "force", false, "replace the workspace even while guest processes have their working directory in it")
	return cmd
}

// prepare runs a prepare operation, printing its stages, and returns the
// workspace it made.
func (g *globals) prepare(ctx context.Context, name string, req api.WorkspaceRequest) (api.Workspace, error) {
	ref, err := g.client().PrepareWorkspace(ctx, name, req)
	if err != nil {
		return api.Workspace{}, err
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "preparing workspace in %s (operation %s)\n", name, ref.ID)
	}
	_, ws, err := watchFor(ctx, g, ref.ID, func(ctx context.Context, vm string) (api.Workspace, error) {
		v, err := g.client().GetVM(ctx, vm)
		if err != nil {
			return api.Workspace{}, err
		}
		if v.Workspace == nil {
			return api.Workspace{}, fmt.Errorf("VM %s has no workspace record", vm)
		}
		return *v.Workspace, nil
	})
	return ws, err
}

func (g *globals) printWorkspace(name string, ws api.Workspace) {
	sent := fmt.Sprintf("%d files (%s)", ws.Files, humanBytes(ws.Bytes))
	if ws.BundleBytes > 0 {
		sent += " + history (" + humanBytes(ws.BundleBytes) + ")"
	}
	fmt.Fprintf(g.stdout, "%s is at %s:%s (%s, %s at %.12s): %s\n", ws.Source, name, ws.Dir,
		ws.Mode, branchLabel(ws.Branch), ws.Head, sent)
	if ws.GuestBranch != "" {
		fmt.Fprintf(g.stdout, "guest-only branch %s is checked out\n", ws.GuestBranch)
	}
	for _, s := range ws.Skipped {
		fmt.Fprintf(g.stderr, "warning: left out %s\n", s)
	}
}

func branchLabel(b string) string {
	if b == "" {
		return "detached HEAD"
	}
	return "branch " + b
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func newWorkspacePullCmd(g *globals) *cobra.Command {
	var req api.PullRequest
	cmd := &cobra.Command{
		Use:   "pull NAME [PATH]",
		Short: "Fetch the guest repository's branches into the host repository as banger/NAME/<branch>",
		Long: `Fetches every branch of the VM's /root/repo into the host repository as
refs/remotes/banger/NAME/<branch> (tags as refs/banger/NAME/tags/<tag>). The host's
own branches, index and working tree are not touched. PATH defaults to the
repository the workspace was prepared from.`,
		Args: args(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if len(a) == 2 {
				var err error
				if req.Path, err = absPath(a, 1); err != nil {
					return err
				}
			}
			res, err := g.client().PullWorkspace(cmd.Context(), a[0], req)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(res)
			}
			g.printPull(res)
			return nil
		},
	}
	return cmd
}

func (g *globals) printPull(res api.PullResult) {
	if len(res.Updated) == 0 && len(res.Removed) == 0 {
		fmt.Fprintf(g.stdout, "nothing new from %s (%d refs up to date)\n", res.VM, res.Unchanged)
		return
	}
	for _, u := range res.Updated {
		short := strings.TrimPrefix(u.HostRef, "refs/remotes/")
		if u.Old == "" {
			fmt.Fprintf(g.stdout, "* new      %s -> %s\n", strings.TrimPrefix(u.GuestRef, "refs/heads/"), short)
		} else {
			fmt.Fprintf(g.stdout, "  %.9s..%.9s  %s -> %s\n", u.Old, u.New, strings.TrimPrefix(u.GuestRef, "refs/heads/"), short)
		}
		for _, l := range u.Log {
			fmt.Fprintf(g.stdout, "      %s\n", l)
		}
	}
	for _, r := range res.Removed {
		fmt.Fprintf(g.stdout, "- removed  %s (gone in the guest)\n", strings.TrimPrefix(r.HostRef, "refs/remotes/"))
	}
	for _, u := range res.Updated {
		if !strings.HasPrefix(u.HostRef, "refs/remotes/") {
			continue
		}
		short := strings.TrimPrefix(u.HostRef, "refs/remotes/")
		fmt.Fprintf(g.stdout, "\nTo use %s:\n  git -C %s log --oneline HEAD..%s\n  git -C %s merge %s\n  git -C %s switch -c %s %s\n",
			short, res.Repo, short, res.Repo, short, res.Repo, strings.TrimPrefix(u.GuestRef, "refs/heads/"), short)
		break
	}
}
