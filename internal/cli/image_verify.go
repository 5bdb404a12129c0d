package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newImageVerifyCmd(g *globals) *cobra.Command {
	var verifyNoWait bool
	cmd := &cobra.Command{
		Use:   "verify NAME",
		Short: "Boot an image once and check its agent, sshd, tools and services",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			ref, err := g.client().VerifyImage(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if verifyNoWait {
				fmt.Fprintln(g.stdout, ref.ID)
				return nil
			}
			if !g.json {
				fmt.Fprintf(g.stderr, "verifying image %s (operation %s)\n", a[0], ref.ID)
			}
			_, verified, err := watchFor(cmd.Context(), g, ref.ID, g.client().GetImage)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(verified)
			}
			fmt.Fprintf(g.stdout, "image %s verified.\n", a[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&verifyNoWait, "no-wait", false, "print the operation id and return at once")
	return cmd
}
