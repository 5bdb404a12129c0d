package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/doctor"
)

func newVersionCmd(g *globals) *cobra.Command {
	var vmName string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's, the daemon's and (with --vm) a guest agent's version",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := map[string]any{"cli": buildinfo.Version}
			c := g.client()
			if v, err := c.Version(cmd.Context()); err == nil {
				out["daemon"] = v.Version
				out["daemon_pid"] = v.PID
				out["accel"] = v.Accel
			} else {
				out["daemon_error"] = err.Error()
			}
			agents := map[string]string{}
			var names []string
			if vmName != "" {
				names = []string{vmName}
			} else if vms, err := c.ListVMs(cmd.Context()); err == nil {
				for _, v := range vms {
					if v.State == api.VMRunning {
						names = append(names, v.Name)
					}
				}
			}
			for _, n := range names {
				if h, err := c.Health(cmd.Context(), n); err == nil && h.Agent != nil {
					agents[n] = h.Agent.Version
				} else if vmName != "" {
					if err == nil {
						err = fmt.Errorf("agent not answering: %s", h.AgentErr)
					}
					return err
				}
			}
			out["agents"] = agents
			if g.json {
				return g.printJSON(out)
			}
			fmt.Fprintf(g.stdout, "cli:     %s\n", buildinfo.Version)
			if d, ok := out["daemon"]; ok {
				fmt.Fprintf(g.stdout, "daemon:  %s (accel %s)\n", d, out["accel"])
			} else {
				fmt.Fprintf(g.stdout, "daemon:  not reachable (%s)\n", out["daemon_error"])
			}
			for n, v := range agents {
				fmt.Fprintf(g.stdout, "agent:   %s (vm %s)\n", v, n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&vmName, "vm", "", "also print this VM's agent version")
	return cmd
}

func newDoctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the host and the daemon, with a fix for each problem",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := g.doctor(cmd.Context())
			if g.json {
				if err := g.printJSON(checks); err != nil {
					return err
				}
			} else {
				for _, c := range checks {
					fmt.Fprintf(g.stdout, "%-4s  %-20s %s\n", c.Status, c.Name, c.Detail)
					if c.Status != doctor.OK && c.Fix != "" {
						fmt.Fprintf(g.stdout, "      %-20s fix: %s\n", "", c.Fix)
					}
				}
			}
			if doctor.Failed(checks) {
				return &exitError{code: ExitError}
			}
			return nil
		},
	}
}

// doctor gathers the daemon's host checks when it answers, and always the
// checks only the client can make (is a daemon reachable, is its socket
// private).
func (g *globals) doctor(ctx context.Context) []doctor.Check {
	c := g.client()
	sock := c.Socket()
	var checks []doctor.Check
	daemonCheck := doctor.Check{Name: "daemon", Required: true}
	if v, err := c.Version(ctx); err != nil {
		daemonCheck.Status, daemonCheck.Detail = doctor.Fail, err.Error()
		daemonCheck.Fix = "start it: `banger daemon` (or `systemctl start banger`)"
	} else {
		daemonCheck.Status, daemonCheck.Detail = doctor.OK, fmt.Sprintf("version %s, pid %d, %s", v.Version, v.PID, sock)
		if dc, err := c.Doctor(ctx); err == nil {
			checks = append(checks, dc...)
		}
	}
	checks = append(checks, daemonCheck)
	sockCheck := doctor.Check{Name: "socket", Required: true}
	if st, err := os.Stat(sock); err != nil {
		sockCheck.Status, sockCheck.Detail = doctor.Warn, "no socket at "+sock
	} else if st.Mode().Perm() != 0o600 {
		sockCheck.Status, sockCheck.Detail = doctor.Fail, fmt.Sprintf("%s has mode %o", sock, st.Mode().Perm())
		sockCheck.Fix = "restart the daemon; it creates the socket 0600"
	} else {
		sockCheck.Status, sockCheck.Detail = doctor.OK, sock+" is 0600"
	}
	return append(checks, sockCheck)
}
