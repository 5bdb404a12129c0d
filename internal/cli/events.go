package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

type eventsOptions struct {
	vm string
}

func newEventsCmd(g *globals) *cobra.Command {
	var o eventsOptions
	cmd := &cobra.Command{
		Use:   "events [--vm NAME] [--json]",
		Short: "Stream daemon events: VM, session and operation changes (Ctrl-C ends)",
		Long: "Print the daemon's event bus as it happens: VMs created, changing state or deleted, sessions\n" +
			"starting and ending, operations and their stages. With --json each event is one JSON line\n" +
			"(the api.BusEvent of GET /v1/events), for orchestrators.",
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.events(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.vm, "vm", "", "only events about this VM")
	return cmd
}

func (g *globals) events(ctx context.Context, o eventsOptions) error {
	enc := json.NewEncoder(g.stdout)
	return g.client().WatchEvents(ctx, o.vm, func(ev api.BusEvent) {
		if g.json {
			_ = enc.Encode(ev)
			return
		}
		printBusEvent(g.stdout, ev)
	})
}

// printBusEvent writes one event as a line for people.
func printBusEvent(w io.Writer, ev api.BusEvent) {
	fmt.Fprintf(w, "%s %s\n", ev.Time.Local().Format("15:04:05"), ev.Summary())
}
