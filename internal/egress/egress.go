// Package egress is the host side of the egress gateway: the policy a
// VM's outbound connections are judged by, the DNS answers the guest
// gets, and the gateway that takes each guest-initiated stream (see
// internal/agentapi/egress.go), decides, dials the upstream itself and
// records the connection. Everything read from a stream is hostile.
package egress

import (
	"context"
	"net"
	"time"
)

// VMRef names the VM a stream came from. It is known by construction
// (the stream arrived on that VM's agent channel), never from the guest.
type VMRef struct {
	ID, Name string
}

// Decisions of a Record.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
	// DecisionLeak: a credential placeholder was sent to a host it does
	// not belong to; the connection was blocked.
	DecisionLeak = "leak"
)

// Record is one connection or DNS query as the log keeps it.
type Record struct {
	Time    time.Time
	VMID    string
	VM      string
	Session string
	Process string
	PID     int
	Proto   string // "tcp" or "dns"
	Name    string // destination name, "" when only an address was known
	Addr    string // destination address as the guest saw it
	Port    uint16
	// Decision is DecisionAllow, DecisionDeny or DecisionLeak; Rule is
	// the rule that decided ("" for the default deny), Policy the
	// policy's label.
	Decision string
	Rule     string
	Policy   string
	Note     string
	// BytesUp is guest to upstream, BytesDown upstream to guest.
	BytesUp, BytesDown int64
	Duration           time.Duration
}

// Interceptor is the credential broker's hook into the gateway: for the
// hosts it brokers, it terminates the guest's TLS with the instance CA
// and swaps placeholders for real credentials on the way upstream.
type Interceptor interface {
	// Intercepts reports whether connections to name:port are the
	// broker's to serve.
	Intercepts(vm VMRef, name string, port uint16) bool
	// Serve owns guest (the gateway has already written its reply line)
	// until the connection ends. dial reaches the upstream through the
	// gateway's resolver (egress.resolve applied); the broker does the
	// TLS itself with the RootCAs it was given. It fills rec's byte
	// counts, and Decision/Note when it blocks a leak.
	Serve(ctx context.Context, vm VMRef, guest net.Conn, name string, port uint16, dial func(ctx context.Context) (net.Conn, error), rec *Record) error
	// Leak reports whether b, plaintext bound for a host the broker
	// does not serve, carries one of this VM's placeholders.
	Leak(vm VMRef, b []byte) bool
}
