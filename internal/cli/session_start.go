package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/attach"
)

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
