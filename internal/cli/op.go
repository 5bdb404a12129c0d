package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/humanize"
)

func newOpCmd(g *globals) *cobra.Command {
	op := &cobra.Command{Use: "op", Short: "Follow long-running operations"}
	op.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List recent operations",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ops, err := g.client().ListOperations(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(ops)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTATE\tAGE\tERROR")
			for _, o := range ops {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.60s\n", o.ID, o.Kind, o.Target, o.State, humanize.Age(o.CreatedAt), o.Error)
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use:   "watch ID",
		Short: "Reattach to an operation and print its stages; exits non-zero if it failed",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			res, err := g.watch(cmd.Context(), a[0], nil)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(res)
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "show ID",
		Short: "Show an operation's record",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			op, err := g.client().GetOperation(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(op)
			}
			printStages(g, op)
			return nil
		},
	})
	return op
}

// watch prints an operation's stages live with their durations (to stderr,
// so stdout stays clean for results), decodes its result into result
// (unless nil) and returns the finished operation, or an error carrying
// the operation's error, hint and console tail.
func (g *globals) watch(ctx context.Context, id string, result any) (api.Operation, error) {
	op, err := g.client().Wait(ctx, api.OperationRef{ID: id}, func(ev api.Event) {
		if ev.Output != nil && !g.json {
			for _, line := range strings.SplitAfter(strings.TrimSuffix(ev.Output.Text, "\n"), "\n") {
				fmt.Fprintf(g.stderr, "    │ %s\n", strings.TrimSuffix(line, "\n"))
			}
			return
		}
		if ev.Stage == nil || g.json {
			return
		}
		s := ev.Stage
		switch s.State {
		case api.OpRunning:
			fmt.Fprintf(g.stderr, "  … %s\n", s.Name)
		case api.OpSucceeded:
			fmt.Fprintf(g.stderr, "  ✓ %-12s %s\n", s.Name, stageDuration(*s))
		default:
			fmt.Fprintf(g.stderr, "  ✗ %-12s %s: %s\n", s.Name, stageDuration(*s), s.Error)
		}
	}, result)
	if err != nil && ctx.Err() != nil {
		return op, fmt.Errorf("stopped watching; the operation goes on: banger op watch %s", id)
	}
	if op.State == api.OpFailed && op.ConsoleTail != "" && !g.json {
		fmt.Fprintf(g.stderr, "--- console tail ---\n%s\n--------------------\n", strings.TrimRight(op.ConsoleTail, "\n"))
	}
	return op, err
}

// watchFor is watch for one result type: when the operation succeeded
// but its record holds no result (the daemon could not store it), the
// object is read by the operation's target instead.
func watchFor[T any](ctx context.Context, g *globals, id string, get func(context.Context, string) (T, error)) (api.Operation, T, error) {
	var v T
	op, err := g.watch(ctx, id, &v)
	if errors.Is(err, api.ErrNoResult) && op.Target != "" {
		v, err = get(ctx, op.Target)
	}
	return op, v, err
}

func stageDuration(s api.Stage) string {
	if s.FinishedAt == nil {
		return ""
	}
	return s.FinishedAt.Sub(s.StartedAt).Round(100 * time.Millisecond).String()
}

func printStages(g *globals, op api.Operation) {
	fmt.Fprintf(g.stdout, "operation %s (%s %s): %s\n", op.ID, op.Kind, op.Target, op.State)
	for _, s := range op.Stages {
		fmt.Fprintf(g.stdout, "  %-10s %-12s %s %s\n", s.State, s.Name, stageDuration(s), s.Error)
	}
	if op.Error != "" {
		fmt.Fprintf(g.stdout, "error: %s\n", op.Error)
	}
}
