package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/humanize"
)

type snapshotOptions struct {
	vm     string
	req    api.SnapshotVMRequest
	noWait bool
}

func newVMSnapshotCmd(g *globals) *cobra.Command {
	var o snapshotOptions
	cmd := &cobra.Command{
		Use:   "snapshot NAME",
		Short: "Save a running VM's memory, devices and disks as a snapshot (prints its stages live)",
		Long: `Pauses the VM, saves its memory and device state, and turns its disks into
read-only layers that the VM and every VM made from the snapshot stack their
own copy-on-write layer on. The VM then runs on (or stays stopped with
--stop). Start new VMs from it with 'banger vm create NEW --snapshot SNAP'.

The subcommands list, show and delete manage snapshots (a VM that is
itself named list, show or delete: 'banger vm snapshot -- NAME').`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.vm = a[0]
			return g.snapshotVM(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.req.Name, "name", "", "snapshot name (default: the VM's name and a timestamp)")
	cmd.Flags().BoolVar(&o.req.Stop, "stop", false, "leave the VM stopped after the save instead of running on")
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "print the operation id and return at once")
	cmd.AddCommand(newSnapshotListCmd(g), newSnapshotShowCmd(g), newSnapshotDeleteCmd(g))
	return cmd
}

func (g *globals) snapshotVM(ctx context.Context, o snapshotOptions) error {
	c := g.client()
	ref, err := c.SnapshotVM(ctx, o.vm, o.req)
	if err != nil {
		return err
	}
	if o.noWait {
		return g.printRef(ref)
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "snapshotting VM %s (operation %s)\n", o.vm, ref.ID)
	}
	var sn api.Snapshot
	op, err := g.watch(ctx, ref.ID, &sn)
	if errors.Is(err, api.ErrNoResult) {
		// The record holds no result (the daemon restarted at its end):
		// read the snapshot by the name asked for, else the target.
		name := o.req.Name
		if name == "" {
			name = op.Target
		}
		sn, err = c.GetSnapshot(ctx, name)
	}
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(sn)
	}
	printSnapshotDone(g.stdout, o.vm, o.req.Stop, sn)
	return nil
}

// printRef prints a started operation's id (--no-wait).
func (g *globals) printRef(ref api.OperationRef) error {
	if g.json {
		return g.printJSON(ref)
	}
	fmt.Fprintln(g.stdout, ref.ID)
	return nil
}

func printSnapshotDone(w io.Writer, vm string, stopped bool, sn api.Snapshot) {
	fmt.Fprintf(w, "Snapshot %s of VM %s: %s on disk (%d CPUs, %s memory).\n",
		sn.Name, vm, sizeLabel(sn.SizeBytes), sn.CPUs, sizeLabel(sn.MemoryBytes))
	if stopped {
		fmt.Fprintf(w, "VM %s is stopped; its disks now stand on the snapshot.\n", vm)
	} else {
		fmt.Fprintf(w, "VM %s runs on; its disks now stand on the snapshot.\n", vm)
	}
	fmt.Fprintln(w, "Next steps:")
	q := shellQuote(sn.Name)
	fmt.Fprintf(w, "  # a new VM that continues from the snapshot\n  banger vm create NEW --snapshot %s\n", q)
	if !stopped {
		fmt.Fprintf(w, "  # snapshot the VM again and start N copies of it in one go\n  banger vm fork %s --count 2\n", shellQuote(vm))
	}
	fmt.Fprintf(w, "  # what it holds and what stands on it\n  banger vm snapshot show %s\n", q)
	fmt.Fprintf(w, "  # remove it (refused while VMs stand on it)\n  banger vm snapshot delete %s\n", q)
}

func newSnapshotListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots (user and images' ready ones)",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			snaps, err := g.client().ListSnapshots(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				if snaps == nil {
					snaps = []api.Snapshot{}
				}
				return g.printJSON(snaps)
			}
			return printSnapshotTable(g.stdout, snaps, time.Now())
		},
	}
}

func printSnapshotTable(w io.Writer, snaps []api.Snapshot, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tVM\tIMAGE\tMEMORY\tSIZE\tCREATED\tUSED-BY")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Kind, orDash(s.VM), orDash(s.Image),
			sizeLabel(s.MemoryBytes), sizeLabel(s.SizeBytes), humanize.Duration(now.Sub(s.CreatedAt)), usedByLabel(s.UsedBy))
	}
	return tw.Flush()
}

// usedByLabel names up to three users and counts the rest.
func usedByLabel(users []string) string {
	switch {
	case len(users) == 0:
		return "-"
	case len(users) <= 3:
		return strings.Join(users, ",")
	}
	return fmt.Sprintf("%s +%d", strings.Join(users[:3], ","), len(users)-3)
}

func newSnapshotShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show SNAP",
		Short: "Show one snapshot",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			sn, err := g.client().GetSnapshot(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(sn)
			}
			printSnapshot(g.stdout, sn)
			return nil
		},
	}
}

func printSnapshot(w io.Writer, sn api.Snapshot) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\nid:\t%s\nkind:\t%s\n", sn.Name, sn.ID, sn.Kind)
	fmt.Fprintf(tw, "vm:\t%s\nimage:\t%s\n", orDash(sn.VM), orDash(sn.Image))
	if sn.Parent != "" {
		fmt.Fprintf(tw, "parent:\t%s\n", sn.Parent)
	}
	fmt.Fprintf(tw, "vmm:\t%s\n", sn.VMM)
	if sn.Compat != "" {
		fmt.Fprintf(tw, "restores on:\t%s\n", sn.Compat)
	}
	fmt.Fprintf(tw, "cpus:\t%d\nmemory:\t%s\nwork disk:\t%s\nsize:\t%s\ncreated:\t%s\n",
		sn.CPUs, sizeLabel(sn.MemoryBytes), sizeLabel(sn.WorkDisk), sizeLabel(sn.SizeBytes), sn.CreatedAt.Local().Format(time.RFC3339))
	if len(sn.UsedBy) > 0 {
		fmt.Fprintf(tw, "used by:\t%s\n", strings.Join(sn.UsedBy, ", "))
	} else {
		fmt.Fprintf(tw, "used by:\tnothing\n")
	}
	fmt.Fprintf(tw, "restore:\tbanger vm create NEW --snapshot %s\n", shellQuote(sn.Name))
	tw.Flush()
}

func newSnapshotDeleteCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete SNAP",
		Aliases: []string{"rm"},
		Short:   "Remove a snapshot and its files (refused while VMs stand on it, unless --force)",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.client().DeleteSnapshot(cmd.Context(), a[0], force); err != nil {
				return withDeleteHint(err, a[0], force)
			}
			if g.json {
				return g.printJSON(map[string]any{"name": a[0], "deleted": true})
			}
			fmt.Fprintf(g.stdout, "Snapshot %s deleted.\n", a[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "first flatten the stopped VMs that stand on it (their disks get their own copy)")
	return cmd
}

// withDeleteHint adds how to go on to a refused delete that came
// without a hint of its own.
func withDeleteHint(err error, name string, force bool) error {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Hint != "" {
		return err
	}
	out := *ae
	switch {
	case ae.Code == api.CodeConflict && !force:
		out.Hint = fmt.Sprintf("delete the VMs and snapshots that stand on it, or flatten them with `banger vm snapshot delete %s --force`", shellQuote(name))
	case ae.Code == api.CodeNotFound:
		out.Hint = "list snapshots with `banger vm snapshot list`"
	default:
		return err
	}
	return &out
}

// sizeLabel is n bytes for people: "312.4 MiB", "1.0 GiB", "-" for
// unknown (0).
func sizeLabel(n int64) string {
	const (
		kib = 1 << 10
		mib = 1 << 20
		gib = 1 << 30
	)
	switch {
	case n <= 0:
		return "-"
	case n >= gib:
		return fmt.Sprintf("%.1f GiB", float64(n)/gib)
	case n >= mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case n >= kib:
		return fmt.Sprintf("%.1f KiB", float64(n)/kib)
	}
	return fmt.Sprintf("%d B", n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
