package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

func newVMEgressCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "egress",
		Short: "A VM's egress policy and connection log (egress mode allow)",
	}
	cmd.AddCommand(newVMEgressShowCmd(g), newVMEgressChangeCmd(g, "allow"), newVMEgressChangeCmd(g, "deny"),
		newVMEgressLogCmd(g), newVMEgressLearnCmd(g))
	return cmd
}

func newVMEgressShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show the policy a VM's connections are judged by",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.egressShow(cmd.Context(), a[0])
		},
	}
}

func (g *globals) egressShow(ctx context.Context, name string) error {
	v, err := g.client().EgressShow(ctx, name)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(v)
	}
	g.printEgressView(v)
	return nil
}

func (g *globals) printEgressView(v api.EgressView) {
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "vm:\t%s\nmode:\t%s\n", v.VM, v.Mode)
	if v.Mode == api.EgressAllow {
		fmt.Fprintf(tw, "policy:\t%s\n", v.Policy)
		list := func(label string, l []string) {
			if len(l) > 0 {
				fmt.Fprintf(tw, "%s:\t%s\n", label, strings.Join(l, " "))
			}
		}
		list("policy allows", v.PolicyAllow)
		list("policy denies", v.PolicyDeny)
		list("vm allows", v.Allow)
		list("vm denies", v.Deny)
		if len(v.EffectiveAllow) == 0 {
			fmt.Fprintf(tw, "allows:\tnothing (every connection is denied)\n")
		}
	}
	if v.Credentials != "" {
		fmt.Fprintf(tw, "credentials:\t%s\n", v.Credentials)
	}
	if len(v.Brokered) > 0 {
		fmt.Fprintf(tw, "brokered:\t%s\n", strings.Join(v.Brokered, ", "))
	}
	tw.Flush()
}
