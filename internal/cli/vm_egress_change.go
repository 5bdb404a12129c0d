package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

// egressChangeOptions are `vm egress allow|deny`'s.
type egressChangeOptions struct {
	name     string
	patterns []string
	deny     bool
	remove   bool
}

// newVMEgressChangeCmd is `vm egress allow` or `vm egress deny`.
func newVMEgressChangeCmd(g *globals, verb string) *cobra.Command {
	o := egressChangeOptions{deny: verb == "deny"}
	short := "Allow destinations to a running VM, at once (host, *.suffix or CIDR, optional :port)"
	if o.deny {
		short = "Deny destinations to a VM, at once (deny wins over allow)"
	}
	cmd := &cobra.Command{
		Use:   verb + " NAME PATTERN...",
		Short: short,
		Args:  args(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.name, o.patterns = a[0], a[1:]
			return g.egressChange(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.remove, "remove", false, "remove the patterns from the VM's own lists instead")
	return cmd
}

func (g *globals) egressChange(ctx context.Context, o egressChangeOptions) error {
	var ch api.EgressChange
	switch {
	case o.remove:
		ch.Remove = o.patterns
	case o.deny:
		ch.Deny = o.patterns
	default:
		ch.Allow = o.patterns
	}
	v, err := g.client().EgressChange(ctx, o.name, ch)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(v)
	}
	g.printEgressView(v)
	return nil
}
