package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bangerdev/banger/api"
)

type createOptions struct {
	req    api.CreateVMRequest
	noWait bool
}

func newVMCreateCmd(g *globals) *cobra.Command {
	var o createOptions
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create and boot a VM (prints its stages live)",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if len(a) == 1 {
				o.req.Name = a[0]
			}
			return g.createVM(cmd.Context(), o)
		},
	}
	addCreateFlags(cmd.Flags(), &o.req)
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "print the operation id and return at once")
	return cmd
}

// addCreateFlags are the VM shape flags `vm create` and `vm run` share.
func addCreateFlags(f *pflag.FlagSet, req *api.CreateVMRequest) {
	f.StringVar(&req.Image, "image", "", "image name (default: the default image)")
	f.IntVar(&req.CPUs, "cpus", 0, "vCPUs (default 2)")
	f.IntVar(&req.MemoryMiB, "memory", 0, "memory in MiB (default 1024)")
	f.IntVar(&req.DiskGiB, "disk", 0, "work disk (/root) size in GiB (default 4)")
	f.StringVar(&req.Egress, "egress", "", "guest network egress: all, none, allow (through the egress gateway with the config's default policy) or a policy name (default: config vm.egress, else allow)")
	f.StringArrayVar(&req.Allow, "allow", nil, "also allow this destination through the gateway: host, *.suffix or CIDR, with an optional :port (repeatable; implies --egress allow)")
	f.StringVar(&req.Credentials, "credentials", "", "how the host's agent credentials reach the VM: broker (placeholders; the gateway swaps in the real ones), copy or none (default: config credentials.mode)")
	f.StringVar(&req.VMM, "vmm", "", "virtual machine monitor: qemu or firecracker (default: [vm] vmm in the config; auto picks Firecracker when it and KVM work)")
	f.BoolVar(&req.Jailer, "jailer", false, "run Firecracker under its jailer (chroot, own uid, cgroup)")
	f.StringVar(&req.Net, "net", "", "network mode: user (QEMU user networking, forwards on 127.0.0.1) or tap (own address on banger's bridge, NAT; needs root) (default: config vm.net, else user)")
	f.BoolVar(&req.NoWaitServices, "no-wait-services", false, "do not wait for the image's services (opencode on :4096) once the agent answers")
	f.StringVar(&req.Snapshot, "snapshot", "", "continue from this snapshot (its image, CPUs, memory and work disk; see `banger vm snapshot list`) instead of booting")
	f.BoolVar(&req.Cold, "cold", false, "boot the image even when it has a usable ready snapshot")
}

// checkCreateFlags refuses flag combinations that cannot mean anything,
// before the daemon is asked.
func checkCreateFlags(req api.CreateVMRequest) error {
	if req.Snapshot != "" && req.Cold {
		return &usageError{fmt.Errorf("--snapshot and --cold exclude each other: --cold boots the image instead of restoring")}
	}
	if req.Snapshot != "" && req.Image != "" {
		return &usageError{fmt.Errorf("--snapshot and --image exclude each other: a VM restored from a snapshot runs the snapshot's image")}
	}
	return nil
}

func (g *globals) createVM(ctx context.Context, o createOptions) error {
	if err := checkCreateFlags(o.req); err != nil {
		return err
	}
	c := g.client()
	ref, err := c.CreateVM(ctx, o.req)
	if err != nil {
		return err
	}
	if o.noWait {
		if g.json {
			return g.printJSON(ref)
		}
		fmt.Fprintln(g.stdout, ref.ID)
		return nil
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "creating VM (operation %s)\n", ref.ID)
	}
	op, err := g.watch(ctx, ref.ID, nil)
	if err != nil {
		return err
	}
	var vm api.VM
	if op.DecodeResult(&vm) != nil || vm.Name == "" {
		// The stream ended before the result (the daemon restarted):
		// the record says what the VM is now.
		if vm, err = c.GetVM(ctx, op.Target); err != nil {
			return err
		}
	}
	if g.json {
		return g.printJSON(vm)
	}
	fmt.Fprintf(g.stdout, "VM %s is running.\n", vm.Name)
	if vm.Snapshot != "" {
		fmt.Fprintf(g.stdout, "  snapshot: %s (its disks stand on it)\n", vm.Snapshot)
	}
	fmt.Fprintf(g.stdout, "  egress: %s\n", vm.EgressSummary())
	fmt.Fprintf(g.stdout, "  banger vm exec %s -- uname -a\n  banger vm ssh %s\n  banger vm stop %s\n  banger vm delete %s\n", vm.Name, vm.Name, vm.Name, vm.Name)
	return nil
}
