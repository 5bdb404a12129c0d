package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/sshkeys"
)

type sshOptions struct {
	name string
	argv []string
}

func newVMSSHCmd(g *globals) *cobra.Command {
	var o sshOptions
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- CMD]",
		Short: "Open an SSH session to a VM (OpenSSH, pinned host key)",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.name, o.argv = a[0], stripDashes(a[1:])
			return g.ssh(cmd.Context(), o)
		},
	}
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// ssh hands the terminal to OpenSSH as a child process. The VM's host key
// is pinned in a per-VM known_hosts file; host key checking stays strict.
func (g *globals) ssh(ctx context.Context, o sshOptions) error {
	c := g.client()
	if len(o.argv) == 0 {
		// The daemon wakes a parked VM before it answers; say why the
		// wait, on an interactive login only (a command's stderr is its own).
		if vm, err := c.GetVM(ctx, o.name); err == nil && vm.State == api.VMParked {
			fmt.Fprintf(g.stderr, "VM %s is parked; waking it…\n", o.name)
		}
	}
	info, err := c.SSHInfo(ctx, o.name)
	if err != nil {
		return err
	}
	argv := sshkeys.SSHArgs(sshkeys.SSHOpts{
		Host: info.Host, Port: info.Port, User: info.User, KeyFile: info.IdentityFile,
		KnownHostsFile: info.KnownHostsFile, HostKeyAlias: info.HostKeyAlias, Command: o.argv,
	})
	cmd := exec.Command("ssh", argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = g.stdin, g.stdout, g.stderr
	// The terminal belongs to ssh now; Ctrl-C is its business.
	signal.Ignore(os.Interrupt)
	defer signal.Reset(os.Interrupt)
	runErr := cmd.Run()
	if len(o.argv) == 0 {
		if vm, err := c.GetVM(context.WithoutCancel(ctx), o.name); err == nil && vm.State == api.VMRunning {
			fmt.Fprintf(g.stderr, "\nVM %s is still running. When you are done:\n  banger vm park %s    (keep it, at no memory or CPU)\n  banger vm stop %s\n  banger vm delete %s\n", o.name, o.name, o.name, o.name)
		}
	}
	var ee *exec.ExitError
	if errors.As(runErr, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		// ssh itself exits 255 on connection failures.
		return &exitError{code: code}
	}
	if runErr != nil {
		return &exitError{code: ExitBanger, err: fmt.Errorf("run ssh: %w", runErr)}
	}
	return nil
}

// stripDashes drops the "--" that separates NAME from the guest command:
// with interspersed flags off, cobra hands it through as an argument.
func stripDashes(a []string) []string {
	if len(a) > 0 && a[0] == "--" {
		return a[1:]
	}
	return a
}
