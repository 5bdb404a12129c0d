package client

import (
	"context"

	"github.com/bangerdev/banger/api"
)

// Wait follows the operation ref names to its end, passing each event to
// onEvent (nil ignores them), and decodes its result into result (nil
// skips it). It returns the finished operation; a failed one also comes
// with its error (OperationError), so callers can still read its stages
// and console tail.
func (c *Client) Wait(ctx context.Context, ref api.OperationRef, onEvent func(api.Event), result any) (api.Operation, error) {
	op, err := c.WatchOperation(ctx, ref.ID, onEvent)
	if err != nil {
		return op, err
	}
	if op.State == api.OpFailed {
		return op, OperationError(op)
	}
	if result != nil {
		if err := op.DecodeResult(result); err != nil {
			return op, err
		}
	}
	return op, nil
}

// WaitVM follows a VM operation (CreateVM) to its end and returns the VM
// it made.
func (c *Client) WaitVM(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.VM, error) {
	var vm api.VM
	_, err := c.Wait(ctx, ref, onEvent, &vm)
	return vm, err
}

// WaitImage follows an image operation (BuildImage, VerifyImage) to its
// end and returns the image it built or verified.
func (c *Client) WaitImage(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.Image, error) {
	var img api.Image
	_, err := c.Wait(ctx, ref, onEvent, &img)
	return img, err
}

// WaitWorkspace follows a workspace prepare (PrepareWorkspace) to its end
// and returns the workspace it made.
func (c *Client) WaitWorkspace(ctx context.Context, ref api.OperationRef, onEvent func(api.Event)) (api.Workspace, error) {
	var ws api.Workspace
	_, err := c.Wait(ctx, ref, onEvent, &ws)
	return ws, err
}
