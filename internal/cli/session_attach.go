package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/attach"
)

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
