package cli

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func newImageShowCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show an image and its package manifest",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			i, err := g.client().GetImage(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "name:        %s\ndefault:     %t\nstate:       %s\nsuite:       %s\nkernel:      %s\nfingerprint: %s\ndir:         %s\nused by:     %v\n",
				i.Name, i.Default, i.State, i.Suite, i.KernelVersion, i.Fingerprint, i.Dir, i.UsedBy)
			if i.Distro != "" {
				fmt.Fprintf(g.stdout, "distro:      %s\n", i.Distro)
			}
			if i.From != "" {
				fmt.Fprintf(g.stdout, "derived from: %s\n", i.From)
			}
			if i.ReadySnapshot != "" {
				fmt.Fprintf(g.stdout, "ready:       snapshot %s (`vm create` restores from it; --cold boots)\n", i.ReadySnapshot)
			}
			switch {
			case i.VerifiedAt == nil:
				fmt.Fprintf(g.stdout, "verified:    never (`banger image verify %s`)\n", i.Name)
			case i.VerifyError != "":
				fmt.Fprintf(g.stdout, "verified:    FAILED at %s: %s\n", i.VerifiedAt.Local().Format(time.RFC3339), i.VerifyError)
			default:
				fmt.Fprintf(g.stdout, "verified:    ok at %s\n", i.VerifiedAt.Local().Format(time.RFC3339))
			}
			if len(i.Services) > 0 {
				fmt.Fprintf(g.stdout, "services:    %s\n", strings.Join(i.Services, ", "))
			}
			npm := make([]string, 0, len(i.NPM))
			for n, v := range i.NPM {
				npm = append(npm, n+"@"+v)
			}
			sort.Strings(npm)
			if len(npm) > 0 {
				fmt.Fprintf(g.stdout, "npm:         %s\n", strings.Join(npm, " "))
			}
			fmt.Fprintf(g.stdout, "packages:    %d\n", len(i.Packages))
			names := make([]string, 0, len(i.Packages))
			for n := range i.Packages {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintf(g.stdout, "  %s %s\n", n, i.Packages[n])
			}
			return nil
		},
	}
	return cmd
}
