package client

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/paths"
)

// DefaultSocket is where the CLI looks for the daemon when no --socket is
// given: $BANGER_SOCKET, else the socket of the instance the environment
// selects ($BANGER_HOME/banger.sock; /run/banger/banger.sock for root;
// $XDG_RUNTIME_DIR/banger/banger.sock, or /tmp/banger-UID/banger.sock
// without XDG_RUNTIME_DIR, for other users).
func DefaultSocket() string {
	return paths.SocketPath("", os.Getenv, os.Getuid())
}

// Run runs a guest command in VM vm to its end, as `banger vm exec` does,
// and returns how it ended. stdin (nil: none) is copied to the command,
// which sees end of file after it; a non-nil stdin sets req.Stdin. The
// command's output is written to stdout and stderr (nil discards); with
// req.TTY both arrive on stdout.
//
// A refusal (unknown VM, agent not answering, empty argv) is an
// *api.Error. A command that ran is not an error whatever its exit code:
// check the status (127 with Error set: not found; 126: not executable;
// 128+N: killed by signal N). Cancelling ctx drops the connection, which
// kills the command, and returns ctx's error.
func (c *Client) Run(ctx context.Context, vm string, req api.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (api.ExitStatus, error) {
	if stdin != nil {
		req.Stdin = true
	}
	conn, err := c.Exec(ctx, vm, req)
	if err != nil {
		return api.ExitStatus{}, err
	}
	defer conn.Close()
	st, err := mux.RunExec(ctx, conn, stdin, stdout, stderr, nil, nil)
	if err != nil {
		if ctx.Err() != nil {
			return api.ExitStatus{}, ctx.Err()
		}
		return api.ExitStatus{}, fmt.Errorf("exec in %s: %w", vm, err)
	}
	return st, nil
}

// FollowSession attaches to session ref of VM vm and copies its output to
// stdout and stderr (nil discards) until the session ends, then returns
// its exit status. req says what is replayed first (FromStart: all that
// is kept; Tail: the last lines) and whether stdin (nil: none) is sent
// to the session (req.Stdin, set when stdin is non-nil). A session that
// has already ended replays its output and returns at once.
//
// Cancelling ctx detaches and returns ctx's error; the session goes on
// running, and a later FollowSession picks it up again. A refusal
// (unknown session, stdin already taken) is an *api.Error.
func (c *Client) FollowSession(ctx context.Context, vm, ref string, req api.AttachSessionRequest, stdin io.Reader, stdout, stderr io.Writer) (api.ExitStatus, error) {
	if stdin != nil {
		req.Stdin = true
	}
	conn, err := c.AttachSession(ctx, vm, ref, req)
	if err != nil {
		return api.ExitStatus{}, err
	}
	defer conn.Close()
	// Without req.Stdin the guest ignores the end-of-stdin frame a nil
	// stdin makes RunExec send, so following never touches the session.
	st, err := mux.RunExec(ctx, conn, stdin, stdout, stderr, nil, nil)
	if err != nil {
		if ctx.Err() != nil {
			return api.ExitStatus{}, ctx.Err()
		}
		return api.ExitStatus{}, fmt.Errorf("follow session %s in %s: %w", ref, vm, err)
	}
	return st, nil
}
