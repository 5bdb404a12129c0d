package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

func newVMShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show one VM",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().GetVM(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			g.printVM(vm)
			return nil
		},
	}
}

// newVMOpencodePasswordCmd prints the VM's opencode password alone, for
// `OPENCODE_SERVER_PASSWORD=$(banger vm opencode-password NAME)`.
func newVMOpencodePasswordCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "opencode-password NAME",
		Short: "Print the password of the VM's opencode server (for opencode attach)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().GetVM(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			pw, err := opencodePassword(vm)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, pw)
			return nil
		},
	}
}

func opencodePassword(vm api.VM) (string, error) {
	if vm.Opencode == nil {
		return "", api.Errorf(api.CodeNotFound, "VMs of an agent image serve opencode (see `banger image list`)", "VM %s serves no opencode", vm.Name)
	}
	if vm.State != api.VMRunning {
		// Its forwarded port is free while it is not running: whoever
		// listens there would get the password from `opencode attach`.
		return "", api.Errorf(api.CodeConflict, fmt.Sprintf("start it first: `banger vm start %s`", vm.Name),
			"VM %s is not running (%s); its opencode password is given out only while it runs", vm.Name, vm.State)
	}
	if vm.Opencode.Password == "" {
		return "", api.Errorf(api.CodeUnavailable, fmt.Sprintf("restart it with `banger vm restart %s`: every boot gives opencode the VM's password", vm.Name),
			"VM %s has not booted since banger gave opencode a password", vm.Name)
	}
	return vm.Opencode.Password, nil
}

func (g *globals) printVM(vm api.VM) {
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	state := vm.State
	if state == api.VMParked {
		state += " (saved to disk; any use wakes it)"
	}
	fmt.Fprintf(tw, "name:\t%s\nid:\t%s\nstate:\t%s\nimage:\t%s\nvmm:\t%s (%s)\ncpus:\t%d\nmemory:\t%d MiB\nwork disk:\t%d GiB\negress:\t%s\n",
		vm.Name, vm.ID, state, vm.Image, vm.VMM, vm.Accel, vm.CPUs, vm.MemoryBytes>>20, vm.WorkDiskBytes>>30, vm.EgressSummary())
	if vm.Snapshot != "" {
		fmt.Fprintf(tw, "snapshot:\t%s (its disks stand on it)\n", vm.Snapshot)
	}
	if vm.Credentials != "" {
		fmt.Fprintf(tw, "credentials:\t%s", vm.Credentials)
		if len(vm.BrokeredCredentials) > 0 {
			fmt.Fprintf(tw, " (brokered: %s)", strings.Join(vm.BrokeredCredentials, ", "))
		}
		fmt.Fprintln(tw)
	}
	if vm.Net != "" {
		fmt.Fprintf(tw, "net:\t%s\n", vm.Net)
	}
	if vm.Address != "" {
		fmt.Fprintf(tw, "address:\t%s (ssh %s:22)\n", vm.Address, vm.Address)
	}
	for _, p := range vm.Ports {
		fmt.Fprintf(tw, "port:\t127.0.0.1:%d -> guest :%d\n", p.HostPort, p.GuestPort)
	}
	if oc := vm.Opencode; oc != nil {
		fmt.Fprintf(tw, "opencode:\t%s (user %s, password from `banger vm opencode-password %s`)\n", oc.URL, oc.Username, vm.Name)
		if vm.State == api.VMRunning {
			fmt.Fprintf(tw, "attach:\t%s\n", opencodeAttachCommand(vm))
		} else {
			fmt.Fprintf(tw, "attach:\tnot running; start it first (`banger vm start %s`)\n", vm.Name)
		}
	}
	fmt.Fprintf(tw, "dir:\t%s\ncreated:\t%s\n", vm.Dir, vm.CreatedAt.Local().Format(time.RFC3339))
	if vm.LastError != "" {
		fmt.Fprintf(tw, "last error:\t%s\n", vm.LastError)
	}
	if vm.WorkSeedFingerprint != "" {
		fmt.Fprintf(tw, "work seed:\t%.12s", vm.WorkSeedFingerprint)
		if vm.ImageWorkSeedFingerprint != "" {
			fmt.Fprintf(tw, " (the image's seed has changed since: now %.12s; new VMs get the new /root skeleton)", vm.ImageWorkSeedFingerprint)
		}
		fmt.Fprintln(tw)
	}
	if len(vm.AuthSynced) > 0 {
		fmt.Fprintf(tw, "auth synced:\t%s\n", strings.Join(vm.AuthSynced, ", "))
	} else {
		fmt.Fprintf(tw, "auth synced:\tnone\n")
	}
	if w := vm.Workspace; w != nil {
		fmt.Fprintf(tw, "workspace:\t%s -> %s (%s, %s at %.12s, %d files)\n", w.Source, w.Dir, w.Mode, branchLabel(w.Branch), w.Head, w.Files)
	}
	tw.Flush()
}
