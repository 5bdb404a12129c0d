// Command banger-agent runs inside every banger guest: `init` applies the
// VM's identity at boot, `serve` is the host's control channel, and
// `supervise` is the per-session supervisor that serve re-executes.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/buildinfo"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

const usage = `usage: banger-agent serve [--port PATH] [--vsock-port N] [--seed PATH]
       banger-agent init [--seed PATH] [--cmdline PATH] [--root DIR]
       banger-agent supervise --dir DIR   (started by serve, one per session)
       banger-agent version
`

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	// journald adds its own timestamps.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
	slog.SetDefault(log)
	fs := flag.NewFlagSet("banger-agent "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch args[0] {
	case "serve":
		port := fs.String("port", agent.DefaultPort, "virtio-serial port to the host (QEMU)")
		vport := fs.Uint("vsock-port", agentapi.AgentVsockPort, "AF_VSOCK port to listen on (Firecracker); 0 disables")
		seed := fs.String("seed", agent.DefaultSeedConfig, "seed config (JSON): its egress settings")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		log.Info("banger-agent serving", "version", buildinfo.Version, "port", *port, "vsock_port", *vport)
		return serve(ctx, log, *port, uint32(*vport), *seed)
	case "init":
		opts := agent.DefaultInitOptions()
		fs.StringVar(&opts.SeedConfig, "seed", opts.SeedConfig, "seed config (JSON)")
		fs.StringVar(&opts.Cmdline, "cmdline", opts.Cmdline, "kernel command line")
		fs.StringVar(&opts.Root, "root", opts.Root, "root of the files written")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		if opts.Root != "/" {
			// Only the real root gets the kernel host name too.
			opts.SetHostname = nil
			opts.ReloadSystemd = nil
			opts.UpdateCACerts = nil
			opts.ApplyEgressRules = nil
		}
		opts.Log = log
		if err := agent.Init(opts); err != nil {
			log.Error("init", "err", err)
			return 1
		}
		log.Info("guest identity applied")
		return 0
	case "supervise":
		// No signal context: the supervisor handles TERM itself (it
		// passes it on to its session's command).
		return agent.SuperviseCommand(args[1:], stderr, log)
	case "egress-debug":
		// Hidden: checks the guest side of the egress gateway on a real
		// guest kernel (see agent.DebugEgress).
		d := fs.Duration("for", 30*time.Second, "how long to serve")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		ctx, cancel := context.WithTimeout(ctx, *d)
		defer cancel()
		dlog := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if err := agent.DebugEgress(ctx, dlog, os.Stdout); err != nil && ctx.Err() == nil {
			log.Error("egress-debug", "err", err)
			return 1
		}
		return 0
	case "version", "--version", "-v":
		fmt.Fprintln(stderr, buildinfo.Version, buildinfo.Commit)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stderr, usage)
		return 0
	}
	fmt.Fprintf(stderr, "banger-agent: unknown command %q\n%s", args[0], usage)
	return 2
}

// serve runs the same HTTP service on both transports a guest may have:
// the virtio-serial port (QEMU) and AF_VSOCK (Firecracker). Each waits
// for its device on its own; a guest without one of them just never gets
// a host there, so the agent need not guess its VMM (udev may not have
// created the port yet when the agent starts).
func serve(ctx context.Context, log *slog.Logger, port string, vport uint32, seedPath string) int {
	srv := agent.NewServer(log)
	errc := make(chan error, 3)
	if seed, err := agent.ReadSeedConfig(seedPath); err != nil {
		log.Info("no seed config: egress gateway off", "err", err)
	} else if seed.Egress != nil {
		env, err := agent.EgressEnv(seed.Egress)
		if err != nil {
			log.Warn("egress environment", "err", err)
		}
		agent.SetEgressEnv(env)
		if seed.Egress.Gateway {
			go func() {
				err := agent.ServeEgress(ctx, log, srv)
				if ctx.Err() == nil {
					// Without the listeners the redirect refuses every
					// connection: fail closed, but say so.
					log.Error("egress gateway stopped", "err", err)
				}
			}()
		}
	}
	go func() { errc <- srv.Serve(ctx, agent.VirtioPort(port)) }()
	if vport != 0 {
		go func() { errc <- serveVsock(ctx, log, srv, vport) }()
	}
	err := <-errc
	if err != nil && ctx.Err() == nil {
		log.Error("serve", "err", err)
		return 1
	}
	return 0
}

// serveVsock listens on the vsock port once the guest has a vsock
// transport (the driver module may load after the agent starts).
func serveVsock(ctx context.Context, log *slog.Logger, srv *agent.Server, port uint32) error {
	logged := false
	for {
		ln, err := agent.ListenVsock(port)
		if err == nil {
			log.Info("listening on vsock", "port", port)
			err = srv.ServeListener(ctx, ln)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Warn("vsock listener ended", "err", err)
		} else if !logged {
			log.Info("no vsock listener (fine under QEMU)", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}
