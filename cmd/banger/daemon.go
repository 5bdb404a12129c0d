package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/cli"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/daemon"
	"github.com/bangerdev/banger/internal/paths"
)

// newDaemonCmd is `banger daemon`. It lives here rather than in
// internal/cli so that the CLI package does not link the daemon.
func newDaemonCmd() *cobra.Command {
	var logLevel string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the banger daemon in the foreground",
		Args:  cli.Args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), logLevel)
		},
	}
	cmd.Flags().StringVar(&logLevel, "log-level", "", "debug, info, warn or error (default from the config, else info)")
	return cmd
}

func runDaemon(ctx context.Context, logLevel string) error {
	layout := paths.Resolve(os.Getenv, os.Getuid())
	cfg, err := config.Load(layout.ConfigFile)
	if err != nil {
		return err
	}
	if logLevel == "" {
		logLevel = cfg.Daemon.LogLevel
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return cli.UsageError(fmt.Errorf("bad log level %q: use debug, info, warn or error", logLevel))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := daemon.New(ctx, daemon.Options{Layout: layout, Config: cfg, Logger: log, AgentPath: cfg.Daemon.AgentPath})
	if err != nil {
		return err
	}
	defer d.Close()
	// VMs keep running after the daemon exits; the next daemon adopts them.
	return d.Serve(ctx)
}
