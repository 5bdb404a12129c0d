package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

type forkOptions struct {
	vm     string
	req    api.ForkVMRequest
	noWait bool
}

func newVMForkCmd(g *globals) *cobra.Command {
	var o forkOptions
	cmd := &cobra.Command{
		Use:   "fork NAME",
		Short: "Snapshot a running VM and start N copies of it (prints its stages live)",
		Long: `Snapshots the VM and restores --count children from the snapshot in one
operation. Each child is a full VM of its own (name, disks, ports, address,
identity) that continues from the instant of the snapshot, sessions included;
the children share the snapshot's memory pages until they write them. The
parent runs on. Pull each child's branches back with 'banger vm workspace
pull CHILD'.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if o.req.Count < 1 {
				return &usageError{fmt.Errorf("--count must be 1 or more, got %d", o.req.Count)}
			}
			o.vm = a[0]
			return g.forkVM(cmd.Context(), o)
		},
	}
	cmd.Flags().IntVar(&o.req.Count, "count", 1, "how many children")
	cmd.Flags().StringVar(&o.req.Prefix, "prefix", "", "name the children PREFIX-1..N (default: the VM's name)")
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "print the operation id and return at once")
	return cmd
}

func (g *globals) forkVM(ctx context.Context, o forkOptions) error {
	c := g.client()
	ref, err := c.ForkVM(ctx, o.vm, o.req)
	if err != nil {
		return err
	}
	if o.noWait {
		return g.printRef(ref)
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "forking VM %s into %d (operation %s)\n", o.vm, o.req.Count, ref.ID)
	}
	var res api.ForkResult
	if _, err := g.watch(ctx, ref.ID, &res); err != nil {
		return err
	}
	if g.json {
		if res.VMs == nil {
			res.VMs = []api.VM{}
		}
		return g.printJSON(res)
	}
	return printForkResult(g.stdout, o.vm, res)
}

// printForkResult lists the children with where each answers, then the
// commands that reach one.
func printForkResult(w io.Writer, parent string, res api.ForkResult) error {
	fmt.Fprintf(w, "VM %s forked into %d VMs from snapshot %s (%s runs on).\n", parent, len(res.VMs), res.Snapshot, parent)
	if len(res.VMs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tSSH\tOPENCODE\tREACH IT")
	for _, vm := range res.VMs {
		oc := "-"
		if vm.Opencode != nil {
			oc = vm.Opencode.URL
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\tbanger vm ssh %s\n", vm.Name, vm.State, sshAddress(vm), oc, shellQuote(vm.Name))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	first := shellQuote(res.VMs[0].Name)
	fmt.Fprintln(w, "Next steps (shown for the first child):")
	fmt.Fprintf(w, "  # run a command in it\n  banger vm exec %s -- git -C /root/repo status\n", first)
	fmt.Fprintf(w, "  # fetch its branches into your repository as banger/%s/<branch>\n  banger vm workspace pull %s\n", res.VMs[0].Name, first)
	fmt.Fprintf(w, "  # remove it\n  banger vm delete %s\n", first)
	return nil
}

// sshAddress is where a VM's sshd answers from the host, "-" when
// nowhere.
func sshAddress(v api.VM) string {
	switch {
	case v.Address != "":
		return v.Address + ":22"
	case v.SSHPort != 0:
		return fmt.Sprintf("127.0.0.1:%d", v.SSHPort)
	}
	return "-"
}

func newVMParkCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "park NAME",
		Short: "Save a running VM to disk and stop its VMM; any use (exec, ssh, attach, vm start) wakes it",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().ParkVM(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			fmt.Fprintf(g.stdout, "VM %s is %s: its memory and devices are saved in its directory and it uses no memory or CPU.\n", vm.Name, vm.State)
			fmt.Fprintf(g.stdout, "Any use through banger wakes it (vm exec, vm ssh, vm session, vm workspace), or: banger vm start %s\n", shellQuote(vm.Name))
			return nil
		},
	}
}
