package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/humanize"
)

func newVMListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			vms, err := g.client().ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vms)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tVMM\tCPUS\tMEMORY\tSSH\tACCEL\tAGE")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\n", v.Name, v.State, v.Image, v.VMM, v.CPUs, v.MemoryBytes>>20, sshAddress(v), v.Accel, humanize.Age(v.CreatedAt))
			}
			return tw.Flush()
		},
	}
}
