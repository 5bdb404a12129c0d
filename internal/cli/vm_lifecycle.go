package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

func newVMLifecycleCmd(g *globals, verb, short string) *cobra.Command {
	var startReq api.StartVMRequest
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c := g.client()
			var vm api.VM
			var err error
			if verb == "start" {
				vm, err = c.StartVMWith(cmd.Context(), a[0], startReq)
			} else {
				vm, err = c.RestartVM(cmd.Context(), a[0])
			}
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			fmt.Fprintf(g.stdout, "VM %s is %s.\n", vm.Name, vm.State)
			return nil
		},
	}
	if verb == "start" {
		cmd.Flags().IntVar(&startReq.DiskGiB, "disk", 0, "grow the work disk (/root) to this many GiB first (shrinking is refused)")
	}
	return cmd
}

func newVMStopCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Power a VM off (its disks are kept)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().StopVM(cmd.Context(), a[0], force)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			fmt.Fprintf(g.stdout, "VM %s is %s.\n", vm.Name, vm.State)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the VM at once instead of a clean poweroff")
	return cmd
}

func newVMDeleteCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Stop a VM if needed and remove it with its disks",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.client().DeleteVM(cmd.Context(), a[0], force); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"name": a[0], "deleted": true})
			}
			fmt.Fprintf(g.stdout, "VM %s deleted.\n", a[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the VM instead of a clean poweroff")
	return cmd
}
