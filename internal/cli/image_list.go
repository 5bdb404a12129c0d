package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newImageListCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			imgs, err := g.client().ListImages(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(imgs)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDEFAULT\tSTATE\tDISTRO\tKERNEL\tSIZE\tFINGERPRINT\tUSED BY")
			for _, i := range imgs {
				def := ""
				if i.Default {
					def = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fGiB\t%.12s\t%d\n", i.Name, def, i.State, i.Distro, i.KernelVersion, float64(i.SizeBytes)/(1<<30), i.Fingerprint, len(i.UsedBy))
			}
			return tw.Flush()
		},
	}
	return cmd
}
