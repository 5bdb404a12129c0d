package agentclient

// TEMPORARY stand-in for helper B's AcceptStream (branch i15-agent); the
// lead deletes this file at merge.

import (
	"context"
	"net"
)

// AcceptStream waits for the next guest-initiated stream (egress).
func (c *Client) AcceptStream(ctx context.Context) (net.Conn, error) {
	return c.sess.AcceptStreamWithContext(ctx)
}
