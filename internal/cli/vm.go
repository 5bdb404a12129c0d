package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newVMCmd(g *globals) *cobra.Command {
	vm := &cobra.Command{Use: "vm", Short: "Create, run commands in, and remove VMs"}
	vm.AddCommand(newVMCreateCmd(g), newVMListCmd(g), newVMShowCmd(g),
		newVMLifecycleCmd(g, "start", "Boot a stopped VM, or wake a parked one"),
		newVMStopCmd(g),
		newVMLifecycleCmd(g, "restart", "Stop and start a VM"),
		newVMDeleteCmd(g), newVMExecCmd(g), newVMSSHCmd(g), newVMHealthCmd(g), newVMLogsCmd(g),
		newVMRunCmd(g), newVMWorkspaceCmd(g), newVMSessionCmd(g), newVMOpencodePasswordCmd(g), newVMEgressCmd(g),
		newVMSnapshotCmd(g), newVMForkCmd(g), newVMParkCmd(g))
	return vm
}

func newVMHealthCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "health NAME",
		Short: "Check a VM's VMM process and guest agent",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			h, err := g.client().Health(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				if err := g.printJSON(h); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "vm:\t%s (%s)\nvmm:\t%s alive=%t\n", h.VM, h.State, h.VMM, h.VMMAlive)
				if h.Agent != nil {
					fmt.Fprintf(g.stdout, "agent:\tok version=%s boot_id=%s uptime=%.0fs\n", h.Agent.Version, h.Agent.BootID, h.Agent.UptimeSeconds)
				} else {
					fmt.Fprintf(g.stdout, "agent:\tnot answering: %s\n", h.AgentErr)
				}
			}
			if h.Agent == nil {
				return &exitError{code: ExitError}
			}
			return nil
		},
	}
}

func newVMLogsCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's serial console log",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.client().Logs(cmd.Context(), a[0], follow, g.stdout)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing as the console writes")
	return cmd
}
