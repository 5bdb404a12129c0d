package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

func newVMEgressLearnCmd(g *globals) *cobra.Command {
	var policy string
	cmd := &cobra.Command{
		Use:   "learn NAME",
		Short: "From a VM's log, print the smallest allowlist that would have let it run",
		Long: "From a VM's egress log, print the smallest allowlist that would have let its connections through: " +
			"as --allow flags for `vm create`, and as a config policy table. Denied connections count too: run a VM under " +
			"a loose policy (or a strict one), use it, then learn what it needed.",
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.egressLearn(cmd.Context(), a[0], policy)
		},
	}
	cmd.Flags().StringVar(&policy, "policy", "learned", "name of the policy table printed")
	return cmd
}

func (g *globals) egressLearn(ctx context.Context, name, policy string) error {
	l, err := g.client().EgressLearn(ctx, name)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(l)
	}
	if len(l.Allow) == 0 {
		fmt.Fprintf(g.stderr, "VM %s has no logged connections through the gateway (only VMs in egress mode allow log them).\n", name)
		return nil
	}
	fmt.Fprintln(g.stdout, "# vm create flags:")
	for _, a := range l.Allow {
		fmt.Fprintf(g.stdout, "--allow %s \\\n", a)
	}
	fmt.Fprintf(g.stdout, "\n# or in the config (then `vm create --egress %s`):\n%s", policy, l.TOMLSnippet(policy))
	return nil
}
