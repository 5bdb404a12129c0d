package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

func newImageRegisterCmd(g *globals) *cobra.Command {
	var reg api.RegisterImageRequest
	cmd := &cobra.Command{
		Use:   "register NAME --rootfs F --kernel K [--initrd I] [--modules DIR]",
		Short: "Register an image made elsewhere (staged unless it is the first)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			reg.Name = a[0]
			for _, p := range []*string{&reg.Rootfs, &reg.Kernel, &reg.Initrd, &reg.Modules} {
				if *p == "" {
					continue
				}
				abs, err := filepath.Abs(*p)
				if err != nil {
					return err
				}
				*p = abs
			}
			i, err := g.client().RegisterImage(cmd.Context(), reg)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "image %s registered (%s, kernel %s).\n", i.Name, i.State, i.KernelVersion)
			return nil
		},
	}
	cmd.Flags().StringVar(&reg.Rootfs, "rootfs", "", "ext4 root filesystem image (required)")
	cmd.Flags().StringVar(&reg.Kernel, "kernel", "", "x86 bzImage kernel (required)")
	cmd.Flags().StringVar(&reg.Initrd, "initrd", "", "initramfs matching the kernel")
	cmd.Flags().StringVar(&reg.Modules, "modules", "", "the kernel's modules directory (named after its release); copied into the rootfs when it lacks them")
	_ = cmd.MarkFlagRequired("rootfs")
	_ = cmd.MarkFlagRequired("kernel")
	return cmd
}
