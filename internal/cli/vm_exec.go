package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
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
	defer conn.Close()

	resize := make(chan [2]uint16, 1)
	signals := make(chan int, 4)
	if o.tty && stdinIsTTY && passStdin {
		old, err := term.MakeRaw(int(stdinFile.Fd()))
		if err == nil {
			defer term.Restore(int(stdinFile.Fd()), old)
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
					select {
					case resize <- [2]uint16{uint16(h), uint16(w)}:
					default:
					}
				}
			}
		}()
	} else {
		// Ctrl-C and TERM go to the guest command; it decides how to end.
		sig := make(chan os.Signal, 2)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(sig)
		go func() {
			for s := range sig {
				select {
				case signals <- int(s.(syscall.Signal)):
				default:
				}
			}
		}()
	}
	var stdin = g.stdin
	if !passStdin {
		stdin = nil
	}
	// The command's context is not used for the stream: an interrupt is
	// forwarded to the guest, not a reason to drop the connection.
	st, err := mux.RunExec(context.WithoutCancel(ctx), conn, stdin, g.stdout, g.stderr, resize, signals)
	if err != nil {
		return ExitBanger, fmt.Errorf("exec stream: %w", err)
	}
	if st.Error != "" && (st.Code == ExitNoFound || st.Code == ExitNoExec) {
		fmt.Fprintf(g.stderr, "banger: %s\n", st.Error)
	}
	return st.Code, nil
}
