package mux

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"time"
)

// The link preamble runs on every new host connection to the agent,
// before yamux. A virtio-serial port does not reliably tell the guest
// that its host changed: when one host leaves and the next connects
// within a few milliseconds, the guest's read never returns EOF and the
// agent's old yamux session would carry on with the new host (and break
// later on a stream id it still holds). So the host proves it is new:
//
//	host  → agent: HostHello(nonce), repeated every linkRepeat until answered
//	agent → host : AgentHello(nonce)
//	host  → agent: HostStart(nonce), then yamux
//
// Each record is linkMagic, one kind byte and a 16-byte nonce. Its first
// byte (0xff) is an invalid yamux version, so a stale agent session that
// reads a HostHello dies at once and the agent starts over on a fresh
// port. Both sides skip anything that is not a record for the current
// nonce: leftovers of the previous session, repeated hellos. The nonce is
// fresh per connection, so stale bytes can never complete a handshake.
const (
	linkMagic     = "\xffBANGER"
	linkNonceSize = 16
	linkRecord    = len(linkMagic) + 1 + linkNonceSize
	linkRepeat    = 200 * time.Millisecond

	linkHostHello  = 'H'
	linkAgentHello = 'A'
	linkHostStart  = 'S'
)

type nonce [linkNonceSize]byte

func record(kind byte, n nonce) []byte {
	b := make([]byte, 0, linkRecord)
	b = append(b, linkMagic...)
	b = append(b, kind)
	return append(b, n[:]...)
}

// scanRecord skips to the next preamble record and returns it.
func scanRecord(br *bufio.Reader) (byte, nonce, error) {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, nonce{}, err
		}
		if b != linkMagic[0] {
			continue
		}
		p, err := br.Peek(linkRecord - 1)
		if err != nil {
			return 0, nonce{}, err
		}
		if string(p[:len(linkMagic)-1]) != linkMagic[1:] {
			continue // resume right after this 0xff
		}
		kind := p[len(linkMagic)-1]
		var n nonce
		copy(n[:], p[len(linkMagic):])
		_, _ = br.Discard(linkRecord - 1)
		return kind, n, nil
	}
}

// LinkHost runs the host side of the preamble on a new connection to the
// agent and returns the connection positioned for yamux. It waits until
// the agent answers or ctx ends: a guest that has not opened its end yet
// (early boot) simply does not answer.
func LinkHost(ctx context.Context, conn net.Conn) (net.Conn, error) {
	var n nonce
	if _, err := rand.Read(n[:]); err != nil {
		return nil, fmt.Errorf("link handshake: %w", err)
	}
	// Deadlines, unlike Close, leave conn usable when ctx ends just as
	// the handshake succeeds.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	done := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		hello := record(linkHostHello, n)
		t := time.NewTicker(linkRepeat)
		defer t.Stop()
		for {
			if _, err := conn.Write(hello); err != nil {
				return
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	br := bufio.NewReader(conn)
	err := func() error {
		for {
			kind, got, err := scanRecord(br)
			if err != nil {
				return err
			}
			if kind == linkAgentHello && got == n {
				return nil
			}
		}
	}()
	close(done)
	// No hello may follow the start record.
	<-wrote
	if err == nil {
		_, err = conn.Write(record(linkHostStart, n))
	}
	if !stop() {
		return nil, fmt.Errorf("link handshake: %w", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("link handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return &bufferedConn{Conn: conn, r: br}, nil
}

// LinkGuest runs the agent side of the preamble on a fresh host
// connection and returns it positioned at the host's first yamux byte.
// When ctx ends it closes rwc.
func LinkGuest(ctx context.Context, rwc io.ReadWriteCloser) (io.ReadWriteCloser, error) {
	stop := context.AfterFunc(ctx, func() { rwc.Close() })
	br := bufio.NewReader(rwc)
	var current nonce
	answered := false
	for {
		kind, n, err := scanRecord(br)
		if err != nil {
			if !stop() {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("link handshake: %w", err)
		}
		switch {
		case kind == linkHostHello && (!answered || n != current):
			// A newer host may replace one mid-handshake: follow the
			// latest nonce.
			current, answered = n, true
			if _, err := rwc.Write(record(linkAgentHello, n)); err != nil {
				stop()
				return nil, fmt.Errorf("link handshake: %w", err)
			}
		case kind == linkHostStart && answered && n == current:
			if !stop() {
				return nil, fmt.Errorf("link handshake: %w", ctx.Err())
			}
			return &bufferedRWC{ReadWriteCloser: rwc, r: br}, nil
		}
	}
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

type bufferedRWC struct {
	io.ReadWriteCloser
	r *bufio.Reader
}

func (c *bufferedRWC) Read(p []byte) (int, error) { return c.r.Read(p) }
