package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/attach"
)

type execOptions struct {
	name        string
	argv        []string
	interactive bool
	tty         bool
	dir         string
}

func newVMExecCmd(g *globals) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] NAME -- CMD [ARGS...]",
		Short: "Run a command in a VM; exits with its status",
		Args: args(func(cmd *cobra.Command, a []string) error {
			if len(a) < 2 {
				return errors.New("usage: banger vm exec [-i] [-t] NAME -- CMD [ARGS...]")
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.name, o.argv = a[0], stripDashes(a[1:])
			if len(o.argv) == 0 {
				return &usageError{errors.New("usage: banger vm exec [-i] [-t] NAME -- CMD [ARGS...]")}
			}
			code, err := g.exec(cmd.Context(), o)
			if err != nil {
				return &exitError{code: ExitBanger, err: err}
			}
			return &exitError{code: code}
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&o.interactive, "interactive", "i", false, "pass stdin even when it is a terminal")
	cmd.Flags().BoolVarP(&o.tty, "tty", "t", false, "give the command a terminal (PTY)")
	cmd.Flags().StringVarP(&o.dir, "workdir", "w", "", "guest working directory (default /root)")
	return cmd
}

// exec runs a guest command with local stdio and returns its exit code.
// Stdin goes along when it is not a terminal, or with -i.
func (g *globals) exec(ctx context.Context, o execOptions) (int, error) {
	stdinFile, _ := g.stdin.(*os.File)
	stdinIsTTY := stdinFile != nil && term.IsTerminal(int(stdinFile.Fd()))
	passStdin := o.interactive || !stdinIsTTY
	req := api.ExecRequest{Argv: o.argv, TTY: o.tty, Stdin: passStdin, Dir: o.dir}
	if o.tty {
		if v := os.Getenv("TERM"); v != "" {
			req.Env = map[string]string{"TERM": v}
		}
		if stdinIsTTY {
			if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
				req.Cols, req.Rows = uint16(w), uint16(h)
			}
		}
	}
	conn, err := g.client().Exec(ctx, o.name, req)
	if err != nil {
		return ExitBanger, err
	}
	// With a local terminal in raw mode every key (Ctrl-C included) goes
	// to the guest's terminal and only the window size is followed;
	// otherwise Ctrl-C, TERM and HUP are forwarded to the guest command,
	// which decides how to end. Nothing detaches: exec has no detach keys.
	raw := o.tty && stdinIsTTY && passStdin
	sigs := make(chan os.Signal, 4)
	if raw {
		signal.Notify(sigs, syscall.SIGWINCH)
	} else {
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	}
	defer signal.Stop(sigs)
	stdin := g.stdin
	if !passStdin || stdin == nil {
		// Empty input: the command sees its stdin end at once.
		stdin = strings.NewReader("")
	}
	// The command's context is not used for the stream: an interrupt is
	// forwarded to the guest, not a reason to drop the connection.
	res, err := attach.Run(context.WithoutCancel(ctx), conn, attach.Options{
		Stdin: stdin, Stdout: g.stdout, Stderr: g.stderr,
		TTY: raw, Terminal: stdinFile, SigProxy: true, DetachKeys: []byte{}, Signals: sigs,
	})
	if err != nil {
		return ExitBanger, fmt.Errorf("exec stream: %w", err)
	}
	if res.Exit == nil {
		return ExitBanger, errors.New("exec stream: detached without an exit status")
	}
	st := *res.Exit
	if st.Error != "" && (st.Code == ExitNoFound || st.Code == ExitNoExec) {
		fmt.Fprintf(g.stderr, "banger: %s\n", st.Error)
	}
	return st.Code, nil
}
