package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/client"
)

// The life of a VM as an orchestrator sees it: create it, wait for the
// operation, bring a repository in, run a session and stream its output,
// pull the branches the session made, delete the VM. This one talks to a
// stand-in daemon, so it runs anywhere; a real program passes
// client.DefaultSocket() to client.New.
func Example() {
	fake := startFakeDaemon() // stand-in daemon
	defer fake.stop()
	ctx := context.Background()
	c := client.New(fake.socket)

	// Long work is an operation: start it, then watch it to its end.
	ref, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "work", Egress: "none"})
	if err != nil {
		log.Fatal(err)
	}
	op, err := c.WatchOperation(ctx, ref.ID, func(ev api.Event) {
		if ev.Stage != nil && ev.Stage.State == api.OpSucceeded {
			fmt.Println("  done:", ev.Stage.Name)
		}
	})
	if err == nil {
		err = client.OperationError(op)
	}
	if err != nil {
		log.Fatal(err)
	}
	vm, err := c.GetVM(ctx, op.Target)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("VM", vm.Name, vm.State)

	// The repository around a host path goes to /root/repo.
	ref, err = c.PrepareWorkspace(ctx, vm.Name, api.WorkspaceRequest{Path: "/src/app"})
	if err != nil {
		log.Fatal(err)
	}
	if op, err = c.WatchOperation(ctx, ref.ID, nil); err == nil {
		err = client.OperationError(op)
	}
	if err != nil {
		log.Fatal(err)
	}

	// A session outlives this program; follow it until it ends.
	s, err := c.StartSession(ctx, vm.Name, api.StartSessionRequest{Name: "job", Argv: []string{"make", "test"}})
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.FollowSession(ctx, vm.Name, s.ID, api.AttachSessionRequest{FromStart: true}, nil, os.Stdout, os.Stderr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("session exited with", st.Code)

	// Branches the session committed come back under banger/VM/.
	pulled, err := c.PullWorkspace(ctx, vm.Name, api.PullRequest{})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range pulled.Updated {
		fmt.Println("pulled", r.HostRef)
	}
	if err := c.DeleteVM(ctx, vm.Name, false); err != nil {
		log.Fatal(err)
	}
	// Output:
	//   done: disk
	//   done: boot
	//   done: agent
	// VM work running
	// building...
	// all tests passed
	// session exited with 0
	// pulled refs/remotes/banger/work/fix
}

// New finds nothing by itself: give it the socket the daemon listens on.
// Every failure the daemon reports is an *api.Error whose Code a program
// can branch on, and whose Hint a person can act on.
func ExampleNew() {
	c := client.New(client.DefaultSocket())
	v, err := c.Version(context.Background())
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && ae.Code == api.CodeUnavailable:
		log.Fatalf("%s (%s)", ae.Message, ae.Hint)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println("daemon", v.Version, "accelerated by", v.Accel)
}

func ExampleClient_Run() {
	fake := startFakeDaemon() // stand-in daemon with a VM named work
	defer fake.stop()
	ctx := context.Background()
	c := client.New(fake.socket)
	if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "work"}); err != nil {
		log.Fatal(err)
	}

	var out strings.Builder
	st, err := c.Run(ctx, "work", api.ExecRequest{Argv: []string{"cat"}, Dir: "/root/repo"},
		strings.NewReader("stdin goes to the guest\n"), &out, os.Stderr)
	if err != nil {
		log.Fatal(err) // banger could not run it
	}
	fmt.Printf("exit %d: %s", st.Code, out.String())

	// A command that ran and failed is an exit status, not an error.
	st, err = c.Run(ctx, "work", api.ExecRequest{Argv: []string{"no-such-tool"}}, nil, nil, nil)
	fmt.Println(st.Code, st.Error, err)

	// A VM that does not exist is an *api.Error with a code.
	_, err = c.Run(ctx, "other", api.ExecRequest{Argv: []string{"true"}}, nil, nil, nil)
	var ae *api.Error
	if errors.As(err, &ae) {
		fmt.Println(ae.Code+":", ae.Message)
	}
	// Output:
	// exit 0: stdin goes to the guest
	// 127 no-such-tool: command not found <nil>
	// not_found: no VM named other
}

// A session started by one program can be followed by another, and
// after a restart of the daemon.
func ExampleClient_FollowSession() {
	ctx := context.Background()
	c := client.New(client.DefaultSocket())
	st, err := c.FollowSession(ctx, "work", "job", api.AttachSessionRequest{Tail: 20}, nil, os.Stdout, os.Stderr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("job exited with", st.Code)
}
