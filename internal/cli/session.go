package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/attach"
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

type sessionStartOptions struct {
	vm     string
	req    api.StartSessionRequest
	env    []string
	attach bool
}

func newSessionStartCmd(g *globals) *cobra.Command {
	var o sessionStartOptions
	cmd := &cobra.Command{
		Use:   "start VM [--name S] [--cwd DIR] [--env K=V]... [--pty] [--attach] -- CMD [ARGS...]",
		Short: "Start a guest command as a session (default cwd: /root/repo if it exists, else /root)",
		Args: args(func(cmd *cobra.Command, a []string) error {
			if dash := cmd.ArgsLenAtDash(); len(a) < 2 || (dash != -1 && dash != 1) {
				return errors.New(sessionStartUsage)
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.vm, o.req.Argv = a[0], a[1:]
			return g.sessionStart(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.req.Name, "name", "", "session name, unique in the VM (default: its id)")
	f.StringVar(&o.req.Cwd, "cwd", "", "guest working directory (default /root/repo if it exists, else /root)")
	f.StringArrayVar(&o.env, "env", nil, "set an environment variable (K=V, repeatable); values are never stored")
	f.BoolVar(&o.req.PTY, "pty", false, "run the command on a terminal")
	f.BoolVar(&o.attach, "attach", false, "attach right away (output from the start, stdin attached)")
	return cmd
}

func (g *globals) sessionStart(ctx context.Context, o sessionStartOptions) error {
	for _, kv := range o.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return &usageError{fmt.Errorf("invalid --env %q: use K=V", kv)}
		}
		if o.req.Env == nil {
			o.req.Env = map[string]string{}
		}
		o.req.Env[k] = v
	}
	if o.req.PTY {
		if v := os.Getenv("TERM"); v != "" && o.req.Env["TERM"] == "" {
			if o.req.Env == nil {
				o.req.Env = map[string]string{}
			}
			o.req.Env["TERM"] = v
		}
		if f, ok := g.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			if cols, rows, err := term.GetSize(int(f.Fd())); err == nil {
				o.req.Rows, o.req.Cols = uint16(rows), uint16(cols)
			}
		}
	}
	s, err := g.client().StartSession(ctx, o.vm, o.req)
	if err != nil {
		return err
	}
	if s.State == api.SessionFailed {
		msg := fmt.Sprintf("session %s failed to launch", s.Name)
		if s.Error != "" {
			msg += ": " + s.Error
		}
		if s.StderrHead != "" {
			msg += "\nfirst lines of its output:\n" + strings.TrimRight(s.StderrHead, "\n")
		}
		return &api.Error{Message: msg, Hint: fmt.Sprintf("see `banger vm session show %s %s`", o.vm, s.Name)}
	}
	if !o.attach {
		if g.json {
			return g.printJSON(s)
		}
		fmt.Fprintf(g.stdout, "session %s (%s) is %s in %s.\n", s.Name, s.ID, s.State, s.Cwd)
		fmt.Fprintf(g.stdout, "  banger vm session attach %s %s\n  banger vm session logs %s %s\n  banger vm session stop %s %s\n", o.vm, s.Name, o.vm, s.Name, o.vm, s.Name)
		return nil
	}
	return g.sessionAttach(ctx, sessionAttachOptions{vm: o.vm, ref: s.ID, fromStart: true, detachKeys: attach.DefaultDetachKeys, known: &s})
}

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
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.ID, state, s.Mode, pid, age(s.StartedAt), commandLine(s))
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

type sessionAttachOptions struct {
	vm, ref    string
	fromStart  bool
	tail       int
	noStdin    bool
	stealStdin bool
	sigProxy   bool
	detachKeys string
	// known is the session when the caller has it already (start --attach).
	known *api.Session
}

func newSessionAttachCmd(g *globals) *cobra.Command {
	var o sessionAttachOptions
	cmd := &cobra.Command{
		Use:   "attach VM S [--from-start | --tail N] [--no-stdin] [--steal-stdin] [--sig-proxy] [--detach-keys KEYS]",
		Short: "Attach local stdio to a session; exits with its status when it ends",
		Long: "Attach local stdin, stdout and stderr to a session. Output kept while nobody was attached is replayed with\n" +
			"--from-start or --tail N, then live output follows. When the session ends, attach exits with its status.\n" +
			"Pipe mode: Ctrl-C detaches (the session keeps running) unless --sig-proxy; closing stdin ends the session's input.\n" +
			"PTY mode: the terminal is raw; Ctrl-P Ctrl-Q (--detach-keys) detaches.",
		Args: args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.vm, o.ref = a[0], a[1]
			if o.fromStart && o.tail > 0 {
				return &usageError{errors.New("pass --from-start or --tail N, not both")}
			}
			if o.tail < 0 {
				return &usageError{errors.New("--tail takes a number of lines >= 0")}
			}
			return g.sessionAttach(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.fromStart, "from-start", false, "replay all output still kept before live output")
	f.IntVar(&o.tail, "tail", 0, "replay the last N lines of each stream before live output")
	f.BoolVar(&o.noStdin, "no-stdin", false, "watch only: do not take the session's stdin")
	f.BoolVar(&o.stealStdin, "steal-stdin", false, "take stdin over from another attacher")
	f.BoolVar(&o.sigProxy, "sig-proxy", false, "pipe mode: forward Ctrl-C, TERM and HUP to the session instead of detaching")
	f.StringVar(&o.detachKeys, "detach-keys", attach.DefaultDetachKeys, "PTY mode: keys that detach (comma-separated, ctrl-X or a character; \"\" disables)")
	return cmd
}

// sessionAttach attaches and turns the outcome into the exit code: the
// session's status, 0 after a detach, ExitBanger when banger failed.
func (g *globals) sessionAttach(ctx context.Context, o sessionAttachOptions) error {
	keys, err := attach.ParseDetachKeys(o.detachKeys)
	if err != nil {
		return &usageError{err}
	}
	c := g.client()
	s := o.known
	if s == nil {
		got, err := c.GetSession(ctx, o.vm, o.ref)
		if err != nil {
			return &exitError{code: ExitBanger, err: err}
		}
		s = &got
	}
	tty := s.Mode == api.SessionModePTY
	stdinFile, _ := g.stdin.(*os.File)
	var terminal *os.File
	if stdinFile != nil && term.IsTerminal(int(stdinFile.Fd())) {
		terminal = stdinFile
	}
	req := api.AttachSessionRequest{FromStart: o.fromStart, Tail: o.tail, Stdin: !o.noStdin, StealStdin: o.stealStdin}
	if tty && terminal != nil {
		if cols, rows, err := term.GetSize(int(terminal.Fd())); err == nil {
			req.Rows, req.Cols = uint16(rows), uint16(cols)
		}
	}
	conn, err := c.AttachSession(ctx, o.vm, s.ID, req)
	if err != nil {
		return &exitError{code: ExitBanger, err: err}
	}
	opts := attach.Options{Stdout: g.stdout, Stderr: g.stderr, TTY: tty, Terminal: terminal, SigProxy: o.sigProxy, DetachKeys: keys}
	if !o.noStdin {
		opts.Stdin = g.stdin
	}
	// Not the command's context: an interrupt detaches (or is forwarded),
	// which attach.Run decides; it is no reason to drop the stream.
	res, err := attach.Run(context.WithoutCancel(ctx), conn, opts)
	if err != nil {
		return &exitError{code: ExitBanger, err: &api.Error{
			Message: fmt.Sprintf("session %s: %v", s.Name, err),
			Hint:    fmt.Sprintf("the session keeps running in the guest; re-attach with `banger vm session attach %s %s`", o.vm, s.Name),
		}}
	}
	if res.Detached {
		nl := ""
		if tty && terminal != nil {
			nl = "\r\n"
		}
		fmt.Fprintf(g.stderr, "%sdetached from session %s; it keeps running. Re-attach: banger vm session attach %s %s\n", nl, s.Name, o.vm, s.Name)
		return nil
	}
	st := res.Exit
	if st.Error != "" && st.Code != 0 {
		fmt.Fprintf(g.stderr, "banger: session %s: %s\n", s.Name, st.Error)
	}
	return &exitError{code: st.Code}
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
