// Command banger is the CLI of banger and, as `banger daemon`, the daemon.
package main

import (
	"os"

	"github.com/bangerdev/banger/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], newDaemonCmd()))
}
