package cli

import (
	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/tui"
)

func newTUICmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tui",
		Short: "Live dashboard of VMs, sessions, operations and images (? lists the keys)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			return tui.Run(cmd.Context(), tui.Options{Backend: c, Socket: c.Socket()})
		},
	}
}
