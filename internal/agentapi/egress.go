package agentapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Egress gateway protocol. When a VM's egress goes through the gateway,
// the guest agent takes every outbound TCP connection and DNS query
// (nftables redirects them to these ports in the guest) and opens one
// guest-initiated stream per connection on the agent channel. The stream
// starts with one EgressOpen line; on a tcp stream the host answers with
// one EgressReply line, then both sides carry raw bytes.
const (
	EgressTCPPort = 15001
	EgressDNSPort = 15053
	// MaxEgressLine caps an EgressOpen or EgressReply line, newline
	// included: both come from the other side of a trust boundary.
	MaxEgressLine = 4096
)

// Stream kinds of EgressOpen.Kind.
const (
	EgressKindTCP = "tcp"
	// EgressKindDNS: after the line, one DNS message framed as in DNS
	// over TCP (2-byte big-endian length, then the message) each way.
	EgressKindDNS = "dns"
)

// EgressOpen is the first line of a guest-initiated egress stream. Every
// field is the guest's claim: the host uses Dst and the attribution for
// the decision and the log only, never to pick what it dials.
type EgressOpen struct {
	Kind    string `json:"kind"`
	Dst     string `json:"dst,omitempty"`     // original destination "ip:port" (tcp)
	PID     int    `json:"pid,omitempty"`     // the connecting process, when the agent found it
	Process string `json:"process,omitempty"` // its comm
	Session string `json:"session,omitempty"` // its banger session (BANGER_SESSION in its environ)
}

// EgressReply is the host's first line on a tcp stream.
type EgressReply struct {
	Allow bool `json:"allow"`
	// Message explains a denial; the agent writes it to its journal,
	// where an agent that wonders why its connection failed can read it.
	Message string `json:"message,omitempty"`
}

// ErrEgressLineTooLong is returned for a line over MaxEgressLine.
var ErrEgressLineTooLong = errors.New("egress line longer than 4096 bytes")

// SessionEnv names the environment variable every session's command
// carries its session id in; the agent reads it from /proc/PID/environ
// to attribute a connection to a session.
const SessionEnv = "BANGER_SESSION"

// WriteEgressLine writes v as one JSON line.
func WriteEgressLine(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b)+1 > MaxEgressLine {
		return ErrEgressLineTooLong
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadEgressLine reads one JSON line of at most MaxEgressLine bytes into
// v, refusing unknown fields and trailing data. It never reads past the
// newline, so what follows stays in r for the caller.
func ReadEgressLine(r *bufio.Reader, v any) error {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > MaxEgressLine {
			return ErrEgressLineTooLong
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return fmt.Errorf("read egress line: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode egress line: %w", err)
	}
	if dec.More() {
		return errors.New("decode egress line: trailing data")
	}
	return nil
}
