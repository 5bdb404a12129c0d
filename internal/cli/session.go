package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/humanize"
)

func newVMSessionCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "session",
		Short: "Long-lived guest commands you attach to and detach from",
	}
	cmd.AddCommand(newSessionStartCmd(g), newSessionListCmd(g), newSessionShowCmd(g),
		newSessionAttachCmd(g), newSessionLogsCmd(g), newSessionSignalCmd(g),
		newSessionStopCmd(g), newSessionRemoveCmd(g))
	return cmd
}

const sessionStartUsage = "usage: banger vm session start VM [--name S] [--cwd DIR] [--env K=V]... [--pty] [--attach] -- CMD [ARGS...]"

func newSessionListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list VM",
		Aliases: []string{"ls"},
		Short:   "List a VM's sessions",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			ss, err := g.client().ListSessions(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				if ss == nil {
					ss = []api.Session{}
				}
				return g.printJSON(ss)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tSTATE\tMODE\tPID\tAGE\tCOMMAND")
			for _, s := range ss {
				state := s.State
				if s.Exit != nil {
					state = fmt.Sprintf("%s (%d)", s.State, s.Exit.Code)
				}
				pid := "-"
				if s.PID != 0 && !s.Final() {
					pid = strconv.Itoa(s.PID)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.ID, state, s.Mode, pid, humanize.Age(s.StartedAt), commandLine(s))
			}
			return tw.Flush()
		},
	}
}

func commandLine(s api.Session) string {
	line := strings.Join(append([]string{s.Command}, s.Args...), " ")
	if len(line) > 60 {
		line = line[:57] + "..."
	}
	return line
}

func newSessionShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show VM S",
		Short: "Show a session's metadata and diagnostics",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			s, err := g.client().GetSession(cmd.Context(), a[0], a[1])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(s)
			}
			g.printSession(s)
			return nil
		},
	}
}

func (g *globals) printSession(s api.Session) {
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\nid:\t%s\nstate:\t%s\nmode:\t%s\ncommand:\t%s\n", s.Name, s.ID, s.State, s.Mode, strings.Join(append([]string{s.Command}, s.Args...), " "))
	if s.Path != "" {
		fmt.Fprintf(tw, "path:\t%s\n", s.Path)
	}
	fmt.Fprintf(tw, "cwd:\t%s\n", s.Cwd)
	if len(s.EnvKeys) > 0 {
		fmt.Fprintf(tw, "env keys:\t%s\n", strings.Join(s.EnvKeys, " "))
	}
	if s.PID != 0 {
		fmt.Fprintf(tw, "pid:\t%d (supervisor %d)\n", s.PID, s.SupervisorPID)
	}
	fmt.Fprintf(tw, "started:\t%s\n", s.StartedAt.Local().Format(time.RFC3339))
	if s.EndedAt != nil {
		fmt.Fprintf(tw, "ended:\t%s\n", s.EndedAt.Local().Format(time.RFC3339))
	}
	if s.Exit != nil {
		fmt.Fprintf(tw, "exit:\t%d", s.Exit.Code)
		if s.Exit.Signal != 0 {
			fmt.Fprintf(tw, " (signal %d)", s.Exit.Signal)
		}
		fmt.Fprintln(tw)
	}
	if s.Error != "" {
		fmt.Fprintf(tw, "error:\t%s\n", s.Error)
	}
	if s.BootID != "" {
		fmt.Fprintf(tw, "boot id:\t%s\n", s.BootID)
	}
	tw.Flush()
	if s.StderrHead != "" {
		fmt.Fprintf(g.stdout, "first lines of stderr:\n%s\n", strings.TrimRight(s.StderrHead, "\n"))
	}
}

func newSessionLogsCmd(g *globals) *cobra.Command {
	var req api.SessionLogsRequest
	var stderr bool
	cmd := &cobra.Command{
		Use:   "logs VM S [--follow] [--stderr] [--tail N]",
		Short: "Print a session's kept output (stdout, or stderr with --stderr)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			req.Stream = api.SessionStreamStdout
			if stderr {
				req.Stream = api.SessionStreamStderr
			}
			return g.client().SessionLogs(cmd.Context(), a[0], a[1], req, g.stdout)
		},
	}
	cmd.Flags().BoolVarP(&req.Follow, "follow", "f", false, "keep printing live output until the session ends")
	cmd.Flags().BoolVar(&stderr, "stderr", false, "print the stderr log instead of stdout (pipe mode)")
	cmd.Flags().IntVar(&req.Tail, "tail", 0, "only the last N lines")
	return cmd
}

func newSessionSignalCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "signal VM S SIGNAL",
		Short: "Send a signal (TERM, INT, HUP, KILL, USR1, a number...) to a session's process group",
		Args:  args(cobra.ExactArgs(3)),
		RunE: func(cmd *cobra.Command, a []string) error {
			sig, err := parseSignal(a[2])
			if err != nil {
				return &usageError{err}
			}
			s, err := g.client().SignalSession(cmd.Context(), a[0], a[1], sig)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(s)
			}
			fmt.Fprintf(g.stdout, "sent %s to session %s (%s).\n", unix.SignalName(syscall.Signal(sig)), s.Name, s.State)
			return nil
		},
	}
}

// parseSignal accepts TERM, SIGTERM, term or 15.
func parseSignal(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal %d out of range 1..64", n)
		}
		return n, nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return int(sig), nil
	}
	return 0, fmt.Errorf("unknown signal %q (use a name such as TERM, INT, HUP, KILL, USR1, or a number)", s)
}

func newSessionStopCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop VM S [--timeout D]",
		Short: "Stop a session: TERM to its process group, KILL after the timeout",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if timeout < 0 {
				return &usageError{errors.New("--timeout must not be negative")}
			}
			s, err := g.client().StopSession(cmd.Context(), a[0], a[1], timeout)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(s)
			}
			how := s.State
			if s.Exit != nil {
				how = fmt.Sprintf("%s with status %d", s.State, s.Exit.Code)
			}
			fmt.Fprintf(g.stdout, "session %s %s.\n", s.Name, how)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait after TERM before KILL (Go duration)")
	return cmd
}

func newSessionRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "remove VM S",
		Aliases: []string{"rm"},
		Short:   "Remove an ended session and its logs from the guest",
		Args:    args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.client().RemoveSession(cmd.Context(), a[0], a[1]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "session %s removed.\n", a[1])
			return nil
		},
	}
}
