// Package client is the Go client of the banger daemon's API. The banger
// CLI is built on it, and so can a host orchestrator be: everything banger
// does is reachable through it. The types it takes and returns are in
// package github.com/bangerdev/banger/api.
//
// # Connecting
//
// The daemon listens on a Unix socket and serves only the user it runs
// as. [DefaultSocket] finds it the way the CLI does: $BANGER_SOCKET, else
// $BANGER_HOME/banger.sock, else /run/banger/banger.sock for root and
// $XDG_RUNTIME_DIR/banger/banger.sock for other users. [New] returns a
// client for a socket; it connects lazily, per request, and checks on
// every connection that the process serving the socket is root or the
// caller's own user before sending anything.
//
//	c := client.New(client.DefaultSocket())
//	v, err := c.Version(ctx)
//
// A Client is safe for concurrent use. Every method takes a context;
// cancelling it abandons the request (and, for streams, the stream).
//
// # Errors
//
// A refusal or failure reported by the daemon is an *[api.Error]: a
// message, a hint a person can act on, and a code (api.CodeInvalid,
// api.CodeNotFound, api.CodeConflict, api.CodeUnavailable,
// api.CodeInternal, ...) a program can branch on:
//
//	var ae *api.Error
//	if errors.As(err, &ae) && ae.Code == api.CodeNotFound { ... }
//
// A daemon that is not running is an *api.Error with code
// api.CodeUnavailable too. Other errors (a broken connection, an answer
// that does not decode) are plain wrapped errors.
//
// # Operations
//
// Long work (creating a VM, preparing a workspace, building an image)
// answers at once with an [api.OperationRef] and goes on in the daemon,
// whether or not anyone watches. [Client.WaitVM], [Client.WaitImage] and
// [Client.WaitWorkspace] follow it to its end and return what it made;
// [Client.Wait] does the same for any result type, and
// [Client.WatchOperation] streams the raw events. A failed operation is
// an *api.Error carrying the operation's id ([OperationError]); one whose
// stream ended while it still ran (the daemon restarted) is
// api.CodeUnavailable, so a caller can branch with errors.Is:
//
//	ref, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "work"})
//	vm, err := c.WaitVM(ctx, ref, func(ev api.Event) { /* progress */ })
//
// Cancelling the wait does not cancel the operation; a later wait
// (from this program or another) picks it up again.
//
// # Snapshots, forks and park
//
// [Client.SnapshotVM] saves a running VM (memory, devices, disks at one
// instant) as a snapshot ([Client.WaitSnapshot] follows it);
// CreateVM with api.CreateVMRequest.Snapshot continues a new VM from one.
// [Client.ForkVM] snapshots a VM and restores N children from it in one
// operation ([Client.WaitFork] returns them). [Client.ParkVM] saves a VM
// to disk and ends its VMM; any use wakes it. [Client.ListSnapshots],
// [Client.GetSnapshot] and [Client.DeleteSnapshot] manage the records.
//
// # Commands and sessions
//
// [Client.Run] runs one guest command to its end with host readers and
// writers as its stdin, stdout and stderr, and returns its
// [api.ExitStatus]; cancelling its context kills the command. A command
// that ran and failed is not an error: check ExitStatus.Code.
//
// Sessions are guest commands that outlive the client, the daemon and
// the guest agent: [Client.StartSession] launches one, [Client.FollowSession]
// streams its output (what is kept, then live) until it ends and returns
// its exit status, and [Client.SessionLogs] reads one stream of it.
// Cancelling FollowSession detaches and leaves the session running.
//
// [Client.Exec] and [Client.AttachSession] return the raw framed stream
// Run and FollowSession drive; only programs inside this module can
// decode it, so other programs use Run and FollowSession.
//
// # Workspaces
//
// [Client.PrepareWorkspace] copies the git repository around a host path
// into a VM at /root/repo (an operation, watched as above), and
// [Client.PullWorkspace] fetches the guest's branches back into the host
// repository under refs/remotes/banger/VM/. The program in
// examples/orchestrator of the banger repository puts it all together:
// create a VM with a repository, run a session, stream its output, pull
// the branches and delete the VM.
package client
