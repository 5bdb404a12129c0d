// Package cli is banger's command line. Each command parses its flags into
// an options struct and calls one function; the daemon does the work.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/client"
	"github.com/bangerdev/banger/internal/paths"
)

// Exit codes of commands other than `vm exec` and `vm ssh -- CMD`, which
// exit with the guest command's status.
const (
	ExitOK      = 0
	ExitError   = 1
	ExitUsage   = 2
	ExitBanger  = 125 // banger itself failed while running a guest command
	ExitNoExec  = 126
	ExitNoFound = 127
)

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error // nil when the code says it all (guest exit status)
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

// usageError marks bad flags or arguments (exit 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }

// UsageError marks err as a bad flag or argument: Main exits 2 on it.
// For commands defined outside this package.
func UsageError(err error) error { return &usageError{err} }

// Args wraps cobra's positional-argument checks as usage errors, for
// commands defined outside this package.
func Args(check cobra.PositionalArgs) cobra.PositionalArgs { return args(check) }

type globals struct {
	socket string
	json   bool
	stdout io.Writer
	stderr io.Writer
	stdin  io.Reader
}

func (g *globals) client() *client.Client {
	return client.New(paths.SocketPath(g.socket, os.Getenv, os.Getuid()))
}

// printJSON writes v as indented JSON on stdout.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Main runs the CLI and returns the process exit code. The extra
// commands join the root: `banger daemon` comes from cmd/banger this way,
// so that this package does not link the daemon.
func Main(args []string, extra ...*cobra.Command) int {
	g := &globals{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin}
	root := newRoot(g)
	root.AddCommand(extra...)
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return exitCode(g, root.ExecuteContext(ctx))
}

// exitCode maps a command's error to the process exit code, printing the
// error (as JSON with --json) on the way.
func exitCode(g *globals, err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) && ee.err == nil {
		return ee.code
	}
	code := ExitError
	if errors.As(err, &ee) {
		code = ee.code
		err = ee.err
	}
	var ue *usageError
	if errors.As(err, &ue) {
		code = ExitUsage
	}
	g.printError(err)
	return code
}

func (g *globals) printError(err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = &api.Error{Message: err.Error()}
	}
	if g.json {
		_ = json.NewEncoder(g.stderr).Encode(api.ErrorBody{Error: &api.Error{Message: ae.Message, Hint: ae.Hint, OperationID: ae.OperationID}})
		return
	}
	fmt.Fprintf(g.stderr, "error: %s\n", ae.Message)
	if ae.Hint != "" {
		fmt.Fprintf(g.stderr, "hint: %s\n", ae.Hint)
	}
	if ae.OperationID != "" {
		fmt.Fprintf(g.stderr, "operation: %s (banger op watch %s)\n", ae.OperationID, ae.OperationID)
	}
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "banger",
		Short:         "Run coding agents and long-lived commands in disposable microVMs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "daemon socket (default: $BANGER_SOCKET, $BANGER_HOME/banger.sock, /run/banger/banger.sock for root, else $XDG_RUNTIME_DIR/banger/banger.sock)")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print machine-readable JSON")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{err} })
	root.AddCommand(
		newVersionCmd(g), newDoctorCmd(g),
		newVMCmd(g), newImageCmd(g), newOpCmd(g),
		newEventsCmd(g), newTUICmd(g),
	)
	return root
}

// args wraps cobra's positional-argument checks as usage errors.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return &usageError{err}
		}
		return nil
	}
}
