package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/bangerdev/banger/api"
)

// ResolveWorkspace checks that req.Path is in a repository the requested
// mode can carry, without a VM: the errors a prepare would give.
func (c *Client) ResolveWorkspace(ctx context.Context, req api.WorkspaceRequest) (api.ResolvedRepo, error) {
	var res api.ResolvedRepo
	return res, c.do(ctx, http.MethodPost, "/workspace/resolve", nil, req, &res)
}

// PrepareWorkspace starts putting the repository of req.Path at
// /root/repo in VM name and returns the operation at once; its result is
// an api.Workspace.
func (c *Client) PrepareWorkspace(ctx context.Context, name string, req api.WorkspaceRequest) (api.OperationRef, error) {
	var ref api.OperationRef
	return ref, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/workspace", nil, req, &ref)
}

// PullWorkspace fetches the guest workspace's branches into the host
// repository under refs/remotes/banger/NAME/.
func (c *Client) PullWorkspace(ctx context.Context, name string, req api.PullRequest) (api.PullResult, error) {
	var res api.PullResult
	return res, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/workspace/pull", nil, req, &res)
}
