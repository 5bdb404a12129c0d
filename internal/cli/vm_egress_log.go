package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/humanize"
)

type egressLogOptions struct {
	name   string
	follow bool
	q      api.EgressLogQuery
}

func newVMEgressLogCmd(g *globals) *cobra.Command {
	var o egressLogOptions
	cmd := &cobra.Command{
		Use:   "log NAME",
		Short: "Print a VM's egress connection log (--json: one record per line)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.name = a[0]
			return g.egressLog(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "keep printing connections as they finish")
	cmd.Flags().BoolVar(&o.q.Denied, "denied", false, "only refused connections (denied, leaks)")
	cmd.Flags().IntVarP(&o.q.Limit, "limit", "n", 0, "only the newest N records (default 1000)")
	return cmd
}

func (g *globals) egressLog(ctx context.Context, o egressLogOptions) error {
	c := g.client()
	p := newEgressPrinter(g.stdout, g.json)
	if !o.follow {
		recs, err := c.EgressLog(ctx, o.name, o.q)
		if err != nil {
			return err
		}
		for _, r := range recs {
			p.print(r)
		}
		return p.flush()
	}
	// Following prints each record as it comes: no column alignment
	// across lines that do not exist yet, so tabs become fixed widths.
	p.live = true
	p.header()
	return c.FollowEgress(ctx, o.name, o.q, p.print)
}

// egressPrinter writes records as a table or as JSON lines.
type egressPrinter struct {
	w       io.Writer
	json    bool
	live    bool
	tw      *tabwriter.Writer
	started bool
}

func newEgressPrinter(w io.Writer, asJSON bool) *egressPrinter {
	return &egressPrinter{w: w, json: asJSON, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

const egressHeader = "TIME\tSESSION\tPROCESS\tDECISION\tDESTINATION\tADDR\tUP\tDOWN\tTOOK\tRULE"

func (p *egressPrinter) header() {
	if p.json || p.started {
		return
	}
	p.started = true
	if p.live {
		fmt.Fprintln(p.w, egressLine(egressHeader))
		return
	}
	fmt.Fprintln(p.tw, egressHeader)
}

func (p *egressPrinter) print(r api.EgressRecord) {
	if p.json {
		b, _ := json.Marshal(r)
		fmt.Fprintf(p.w, "%s\n", b)
		return
	}
	p.header()
	rule := r.Rule
	if rule == "" && r.Denied() {
		rule = "(default deny)"
	}
	if r.Note != "" {
		rule += " " + r.Note
	}
	line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s",
		r.Time.Local().Format("15:04:05"), dash(r.Session), dash(processLabel(r)), r.Decision, dash(r.Target()), dash(r.Addr),
		bytesLabel(r.BytesUp), bytesLabel(r.BytesDown), durationLabel(r.DurationMS), rule)
	if p.live {
		fmt.Fprintln(p.w, egressLine(line))
		return
	}
	fmt.Fprintln(p.tw, line)
}

func (p *egressPrinter) flush() error {
	if p.json {
		return nil
	}
	return p.tw.Flush()
}

// egressLine lays out one tab-separated line in fixed columns.
func egressLine(tabbed string) string {
	widths := []int{8, 12, 16, 8, 32, 20, 8, 8, 6}
	var out []byte
	col := 0
	start := 0
	for i := 0; i <= len(tabbed); i++ {
		if i < len(tabbed) && tabbed[i] != '\t' {
			continue
		}
		f := tabbed[start:i]
		if col < len(widths) {
			f = fmt.Sprintf("%-*s  ", widths[col], f)
		}
		out = append(out, f...)
		col++
		start = i + 1
	}
	return string(out)
}

func processLabel(r api.EgressRecord) string {
	if r.Process == "" {
		return ""
	}
	if r.PID != 0 {
		return fmt.Sprintf("%s[%d]", r.Process, r.PID)
	}
	return r.Process
}

func bytesLabel(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d", n)
}

func durationLabel(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", ms)
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return humanize.Duration(d)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
