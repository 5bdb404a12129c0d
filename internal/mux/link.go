package mux

import (
	"bufio"
	"bytes"
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
// later on a stream id it still holds). So every connection starts with a
// three-way handshake on fresh nonces:
//
//	host  → agent: HostHello(h)       repeated every linkRepeat until answered
//	agent → host : AgentHello(h, a)   a is new for every h the agent answers
//	host  → agent: HostStart(h, a)    then yamux, both ways
//
// A record is linkMagic, one kind byte and two 16-byte nonces. Its first
// byte, 0xff, occurs nowhere else in a record and is an invalid yamux
// version: a stale agent session that reads a HostHello dies at once and
// the agent starts over on a fresh port. Both sides skip everything that
// is not the record they wait for (leftovers of an earlier session,
// repeated hellos), and since h and a are fresh, leftovers can never
// complete a handshake. The agent answers each h once, so no stray
// AgentHello can land in the host's yamux session.
const (
	linkMagic     = "\xffBANGER"
	linkNonceSize = 16
	linkRecord    = len(linkMagic) + 1 + 2*linkNonceSize
	linkRepeat    = 50 * time.Millisecond

	linkHostHello  = 'H'
	linkAgentHello = 'A'
	linkHostStart  = 'S'
)

type nonce [linkNonceSize]byte

type linkRec struct {
	kind        byte
	host, agent nonce
}

func (r linkRec) bytes() []byte {
	b := make([]byte, 0, linkRecord)
	b = append(b, linkMagic...)
	b = append(b, r.kind)
	b = append(b, r.host[:]...)
	return append(b, r.agent[:]...)
}

// newNonce returns a random nonce without 0xff bytes (7 random bits per
// byte): a 0xff then only ever starts a record, which is what lets the
// scanner resynchronise on one.
func newNonce() (nonce, error) {
	var n nonce
	if _, err := rand.Read(n[:]); err != nil {
		return n, err
	}
	for i := range n {
		n[i] &= 0x7f
	}
	return n, nil
}

// scanRecord skips to the next preamble record and returns it. A
// candidate whose body holds another 0xff was cut short by the record
// starting there (stale bytes ending in part of a record), so scanning
// resumes at that 0xff instead of swallowing the start of a real record.
func scanRecord(br *bufio.Reader) (linkRec, error) {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return linkRec{}, err
		}
		if b != linkMagic[0] {
			continue
		}
		p, err := br.Peek(linkRecord - 1)
		if err != nil {
			return linkRec{}, err
		}
		if i := bytes.IndexByte(p, linkMagic[0]); i >= 0 {
			_, _ = br.Discard(i)
			continue
		}
		if string(p[:len(linkMagic)-1]) != linkMagic[1:] {
			continue
		}
		r := linkRec{kind: p[len(linkMagic)-1]}
		if r.kind != linkHostHello && r.kind != linkAgentHello && r.kind != linkHostStart {
			continue
		}
		p = p[len(linkMagic):]
		copy(r.host[:], p)
		copy(r.agent[:], p[linkNonceSize:])
		_, _ = br.Discard(linkRecord - 1)
		return r, nil
	}
}

// LinkHost runs the host side of the preamble on a new connection to the
// agent and returns the connection positioned for yamux. It waits until
// the agent answers or ctx ends: a guest that has not opened its end yet
// (early boot) simply does not answer.
func LinkHost(ctx context.Context, conn net.Conn) (net.Conn, error) {
	h, err := newNonce()
	if err != nil {
		return nil, fmt.Errorf("link handshake: %w", err)
	}
	// Deadlines, unlike Close, leave conn usable when ctx ends just as
	// the handshake succeeds.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	done := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		hello := linkRec{kind: linkHostHello, host: h}.bytes()
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
	var a nonce
	err = func() error {
		for {
			r, err := scanRecord(br)
			if err != nil {
				return err
			}
			if r.kind == linkAgentHello && r.host == h {
				a = r.agent
				return nil
			}
		}
	}()
	close(done)
	// No hello may follow the start record.
	<-wrote
	if err == nil {
		_, err = conn.Write(linkRec{kind: linkHostStart, host: h, agent: a}.bytes())
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
	fail := func(err error) (io.ReadWriteCloser, error) {
		if !stop() {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("link handshake: %w", err)
	}
	br := bufio.NewReader(rwc)
	var cur linkRec // the AgentHello last sent
	for {
		r, err := scanRecord(br)
		if err != nil {
			return fail(err)
		}
		switch {
		case r.kind == linkHostHello && (cur.kind == 0 || r.host != cur.host):
			// A newer host may replace one mid-handshake: answer the
			// latest.
			a, err := newNonce()
			if err != nil {
				return fail(err)
			}
			cur = linkRec{kind: linkAgentHello, host: r.host, agent: a}
			if _, err := rwc.Write(cur.bytes()); err != nil {
				return fail(err)
			}
		case r.kind == linkHostStart && cur.kind != 0 && r.host == cur.host && r.agent == cur.agent:
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
