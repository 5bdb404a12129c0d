package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/bangerdev/banger/api"
)

// Wait follows the operation ref names to its end, passing each event to
// onEvent (nil ignores them), and decodes its result into result (nil
// skips it). It returns the finished operation; a failed one also comes
// with its error (OperationError), so callers can still read its stages
// and console tail. Every error is an *api.Error (with the operation's
// id) or the context's: an operation whose stream ended while it was
// still running (the daemon restarted) is CodeUnavailable; a succeeded
// one without a stored result wraps api.ErrNoResult.
func (c *Client) Wait(ctx context.Context, ref api.OperationRef, onEvent func(api.Event), result any) (api.Operation, error) {
	op, err := c.WatchOperation(ctx, ref.ID, onEvent)
	if err != nil {
		return op, err
	}
	switch op.State {
	case api.OpSucceeded:
	case api.OpFailed:
		return op, OperationError(op)
	default:
		return op, &api.Error{Code: api.CodeUnavailable, OperationID: op.ID,
			Message: fmt.Sprintf("operation %s is still %s, but its event stream ended", op.ID, op.State),
			Hint:    "follow it again with `banger op watch " + op.ID + "`"}
	}
	if result != nil {
		if err := op.DecodeResult(result); err != nil {
			return op, &resultError{op: op.ID, err: err}
		}
	}
	return op, nil
}

// resultError is an *api.Error (internal) that still matches
// api.ErrNoResult with errors.Is.
type resultError struct {
	op  string
	err error
}

func (e *resultError) Error() string { return e.err.Error() }
func (e *resultError) Unwrap() []error {
	return []error{e.err, &api.Error{Code: api.CodeInternal, OperationID: e.op, Message: e.err.Error()}}
}

// waitFor is Wait for one result type, reading the object by the
// operation's target when the record holds no result.
func waitFor[T any](ctx context.Context, c *Client, ref api.OperationRef, onEvent func(api.Event), get func(ctx context.Context, target string) (T, error)) (T, error) {
	var v T
	op, err := c.Wait(ctx, ref, onEvent, &v)
	if errors.Is(err, api.ErrNoResult) && op.Target != "" {
		return get(ctx, op.Target)
	}
	return v, err
}

// WaitVM follows a VM operation (CreateVM) to its end and returns the VM
// it made.
func (c *Client) WaitVM(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.VM, error) {
	return waitFor(ctx, c, ref, onEvent, c.GetVM)
}

// WaitImage follows an image operation (BuildImage, VerifyImage) to its
// end and returns the image it built or verified.
func (c *Client) WaitImage(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.Image, error) {
	return waitFor(ctx, c, ref, onEvent, c.GetImage)
}

// WaitWorkspace follows a workspace prepare (PrepareWorkspace) to its end
// and returns the workspace it made.
func (c *Client) WaitWorkspace(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.Workspace, error) {
	return waitFor(ctx, c, ref, onEvent, c.workspaceOf)
}

// workspaceOf reads the workspace last prepared into VM name.
func (c *Client) workspaceOf(ctx context.Context, name string) (api.Workspace, error) {
	vm, err := c.GetVM(ctx, name)
	if err != nil {
		return api.Workspace{}, err
	}
	if vm.Workspace == nil {
		return api.Workspace{}, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("VM %q has no workspace", name)}
	}
	return *vm.Workspace, nil
}
