package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"
)

func newImageCmd(g *globals) *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Build and manage VM images"}
	img.AddCommand(newImageBuildCmd(g), newImageListCmd(g), newImageShowCmd(g), newImageDeleteCmd(g),
		newImageExportCmd(g), newImageImportCmd(g), newImageVerifyCmd(g), newImagePromoteCmd(g), newImageRegisterCmd(g))
	return img
}

func newImageDeleteCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete an image (refused while a VM uses it)",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.client().DeleteImage(cmd.Context(), a[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "image %s deleted.\n", a[0])
			return nil
		},
	}
	return cmd
}

func newImageExportCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export NAME DIR",
		Short: "Copy an image into DIR (for `image import` elsewhere)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			dir, err := filepath.Abs(a[1])
			if err != nil {
				return err
			}
			if err := g.client().ExportImage(cmd.Context(), a[0], dir); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "image %s exported to %s.\n", a[0], dir)
			return nil
		},
	}
	return cmd
}

func newImageImportCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import DIR",
		Short: "Register an image written by `image export`",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			dir, err := filepath.Abs(a[0])
			if err != nil {
				return err
			}
			i, err := g.client().ImportImage(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "image %s imported.\n", i.Name)
			return nil
		},
	}
	return cmd
}

func newImagePromoteCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "promote NAME",
		Short: "Make a staged image managed and the default for new VMs",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			i, err := g.client().PromoteImage(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "image %s is managed and the default.\n", i.Name)
			return nil
		},
	}
	return cmd
}
