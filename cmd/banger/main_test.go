package main

import (
	"testing"

	"github.com/bangerdev/banger/internal/cli"
)

// The daemon command joins the CLI's root from here and keeps its exit
// codes: a bad flag value is a usage error.
func TestDaemonBadLogLevel(t *testing.T) {
	t.Setenv("BANGER_HOME", t.TempDir())
	if code := cli.Main([]string{"daemon", "--log-level", "loud"}, newDaemonCmd()); code != cli.ExitUsage {
		t.Fatalf("exit %d, want %d", code, cli.ExitUsage)
	}
	if code := cli.Main([]string{"daemon", "extra"}, newDaemonCmd()); code != cli.ExitUsage {
		t.Fatalf("exit %d, want %d", code, cli.ExitUsage)
	}
}
