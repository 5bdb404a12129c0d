package agentclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
)

// Identity gives a guest restored from a snapshot its own identity
// (agentapi.AgentIdentityPath) and returns what the agent did. A refused
// or failed request is a *StatusError carrying the agent's *api.Error
// (400: the request was refused and nothing changed; 500: the named step
// failed part way). ctx bounds the whole call (30s when it has no
// deadline): the agent restarts sshd within it.
//
// req holds secrets (host keys, credentials): errors never include it.
func (c *Client) Identity(ctx context.Context, req agentapi.IdentityRequest) (agentapi.IdentityReply, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return agentapi.IdentityReply{}, fmt.Errorf("agent identity: encode: %w", err)
	}
	if len(body) > agentapi.MaxIdentityBody {
		return agentapi.IdentityReply{}, fmt.Errorf("agent identity: request of %d bytes is over the agent's limit of %d", len(body), agentapi.MaxIdentityBody)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+agentapi.AgentIdentityPath, bytes.NewReader(body))
	if err != nil {
		return agentapi.IdentityReply{}, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hreq)
	if err != nil {
		return agentapi.IdentityReply{}, fmt.Errorf("agent identity: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return agentapi.IdentityReply{}, fmt.Errorf("agent identity: %w", statusError(resp))
	}
	var reply agentapi.IdentityReply
	// The reply comes from the guest: bounded like every other answer.
	if err := json.NewDecoder(io.LimitReader(resp.Body, api.MaxBodyBytes)).Decode(&reply); err != nil {
		return agentapi.IdentityReply{}, fmt.Errorf("agent identity: decode reply: %w", err)
	}
	return reply, nil
}
