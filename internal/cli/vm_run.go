package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

type runOptions struct {
	create api.CreateVMRequest
	ws     api.WorkspaceRequest
}

// RunResult is what `vm run --json` prints.
type RunResult struct {
	VM        api.VM        `json:"vm"`
	Workspace api.Workspace `json:"workspace"`
	NextSteps []NextStep    `json:"next_steps"`
}

// NextStep is one copy-pasteable command and what it is for.
type NextStep struct {
	What    string `json:"what"`
	Command string `json:"command"`
}

func newVMRunCmd(g *globals) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [PATH]",
		Short: "Create a VM with the repository at PATH (default: here) at /root/repo, and print what to do next",
		Long: `Checks the git repository enclosing PATH, creates a VM (every vm create flag
applies), prepares the repository into it at /root/repo as
'banger vm workspace prepare' does, and prints the next commands. Nothing is
attached automatically.`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			var err error
			if o.ws.Path, err = absPath(a, 0); err != nil {
				return err
			}
			return g.run(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.create.Name, "name", "", "VM name (default: generated)")
	addCreateFlags(cmd.Flags(), &o.create)
	addWorkspaceFlags(cmd.Flags(), &o.ws)
	return cmd
}

func (g *globals) run(ctx context.Context, o runOptions) error {
	if err := checkCreateFlags(o.create); err != nil {
		return err
	}
	c := g.client()
	// Refuse a bad repository before a VM exists.
	repo, err := c.ResolveWorkspace(ctx, o.ws)
	if err != nil {
		return err
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "repository %s (%s)\n", repo.Root, branchLabel(repo.Branch))
	}
	ref, err := c.CreateVM(ctx, o.create)
	if err != nil {
		return err
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "creating VM (operation %s)\n", ref.ID)
	}
	op, err := g.watch(ctx, ref.ID, nil)
	if err != nil {
		return err
	}
	name := op.Target
	ws, err := g.prepare(ctx, name, o.ws)
	if err != nil {
		retry := []string{"banger", "vm", "workspace", "prepare", name, shellQuote(repo.Root)}
		if o.ws.Mode != "" {
			retry = append(retry, "--mode", o.ws.Mode)
		}
		if o.ws.Branch != "" {
			retry = append(retry, "--branch", shellQuote(o.ws.Branch))
		}
		if o.ws.From != "" {
			retry = append(retry, "--from", shellQuote(o.ws.From))
		}
		out := &api.Error{Code: api.CodeInternal, Message: err.Error()}
		var ae *api.Error
		if errors.As(err, &ae) {
			out.Code, out.Message, out.OperationID = ae.Code, ae.Message, ae.OperationID
		}
		hint := fmt.Sprintf("retry with `%s`, or remove the VM with `banger vm delete %s`", strings.Join(retry, " "), name)
		if ae != nil && ae.Hint != "" {
			hint = ae.Hint + "; then " + hint
		}
		out.Message = fmt.Sprintf("VM %s was created, but preparing the workspace failed: %s", name, out.Message)
		out.Hint = hint
		return out
	}
	vm, err := c.GetVM(ctx, name)
	if err != nil {
		return err
	}
	steps := nextSteps(vm)
	if g.json {
		return g.printJSON(RunResult{VM: vm, Workspace: ws, NextSteps: steps})
	}
	g.printWorkspace(name, ws)
	fmt.Fprintf(g.stdout, "\nVM %s is running (egress: %s). Next steps:\n", name, vm.EgressSummary())
	for _, s := range steps {
		fmt.Fprintf(g.stdout, "  # %s\n  %s\n", s.What, s.Command)
	}
	return nil
}

// nextSteps are the commands `vm run` suggests, with the real VM name
// and forwarded port.
func nextSteps(vm api.VM) []NextStep {
	n := vm.Name
	steps := []NextStep{
		{"open a shell in the VM (the repository is at /root/repo)", "banger vm ssh " + n},
		{"run a command in the repository", "banger vm exec -w /root/repo " + n + " -- git status"},
		{"run a coding agent in a session (survives daemon restarts; Ctrl-P Ctrl-Q detaches)",
			"banger vm session start " + n + " --name claude --pty --attach -- claude"},
	}
	if vm.Opencode != nil {
		steps = append(steps, NextStep{"attach to opencode from the host, in the repository (`banger vm opencode-password` prints its password)",
			opencodeAttachCommand(vm)})
	}
	if vm.Egress == api.EgressAllow {
		steps = append(steps, NextStep{"watch where the VM connects (denied ones say how to allow them)", "banger vm egress log " + n + " --follow"})
	}
	steps = append(steps,
		NextStep{"list the VM's sessions (attach one with banger vm session attach " + n + " S)", "banger vm session list " + n},
		NextStep{"fetch the VM's branches into your repository as banger/" + n + "/<branch>", "banger vm workspace pull " + n},
		NextStep{"stop the VM (keeps its disk)", "banger vm stop " + n},
		NextStep{"delete the VM", "banger vm delete " + n},
	)
	return steps
}

// opencodeAttachCommand opens the VM's opencode in its repository.
// The password travels in the environment that `opencode attach` reads,
// fetched from the daemon at the moment the command runs: it never sits
// in the printed text, a shell history or a process's argv.
func opencodeAttachCommand(vm api.VM) string {
	dir := "/root/repo"
	if vm.Workspace != nil && vm.Workspace.Dir != "" {
		dir = vm.Workspace.Dir
	}
	return fmt.Sprintf("OPENCODE_SERVER_PASSWORD=$(banger vm opencode-password %s) opencode attach %s --dir %s",
		shellQuote(vm.Name), vm.Opencode.URL, shellQuote(dir))
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@%+=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
