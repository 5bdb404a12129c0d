package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// ErrVsockRefused reports that Firecracker closed the connection instead
// of answering OK: nothing listens on that guest port (yet).
var ErrVsockRefused = errors.New("vsock connection refused by the guest")

// maxOKLine bounds the handshake reply: "OK " and a 32-bit port number
// and the newline fit in far less.
const maxOKLine = 32

// handshakeTimeout bounds the CONNECT/OK exchange when ctx has no
// earlier deadline.
const handshakeTimeout = 5 * time.Second

// DialVsock connects to a guest vsock port through Firecracker's hybrid
// vsock Unix socket: send "CONNECT <port>\n", read exactly the "OK <n>\n"
// line, and the connection is then the guest's stream.
func DialVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("dial vsock socket: %w", err)
	}
	if err := Handshake(ctx, conn, port); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Handshake runs the CONNECT/OK exchange on conn. The reply is read one
// byte at a time so no byte of the guest's stream that may follow the
// newline is consumed here.
func Handshake(ctx context.Context, conn net.Conn, port uint32) error {
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("vsock handshake: %w", err)
	}
	// A cancelled ctx interrupts a blocked read.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return fmt.Errorf("vsock handshake: send CONNECT: %w", err)
	}
	line, err := readLine(conn, maxOKLine)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Firecracker closes the connection when no guest listener
		// takes it: EOF before any byte of a reply.
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("vsock port %d: %w", port, ErrVsockRefused)
		}
		return fmt.Errorf("vsock handshake: %w", err)
	}
	if _, err := ParseOK(line); err != nil {
		return fmt.Errorf("vsock handshake: %w", err)
	}
	return conn.SetDeadline(time.Time{})
}

// readLine reads up to and including '\n', at most max bytes, one byte
// per read.
func readLine(r io.Reader, max int) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for b.Len() < max {
		n, err := r.Read(one)
		if n == 1 {
			b.WriteByte(one[0])
			if one[0] == '\n' {
				return b.String(), nil
			}
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) && b.Len() > 0 {
				return "", fmt.Errorf("reply %q cut short: %w", b.String(), io.ErrUnexpectedEOF)
			}
			return "", err
		}
	}
	return "", fmt.Errorf("reply longer than %d bytes without a newline: %q", max, b.String())
}

// ParseOK parses Firecracker's "OK <host port>\n" acknowledgement and
// returns the host-side port number it names.
func ParseOK(line string) (uint32, error) {
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return 0, fmt.Errorf("unexpected reply %q (want \"OK <port>\")", line)
	}
	rest, ok = strings.CutSuffix(rest, "\n")
	if !ok {
		return 0, fmt.Errorf("reply %q does not end in a newline", line)
	}
	if rest == "" || rest[0] == '+' || rest[0] == '-' {
		return 0, fmt.Errorf("bad port in reply %q", line)
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port in reply %q", line)
	}
	return uint32(n), nil
}
