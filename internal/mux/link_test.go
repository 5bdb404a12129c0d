package mux

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func mustNonce(t testing.TB) nonce {
	n, err := newNonce()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// linkPair runs both halves over a pipe; guestJunk is what the guest's
// port holds before the host's bytes (leftovers of an earlier session).
func linkPair(t *testing.T, guestJunk []byte) (host net.Conn, guest io.ReadWriteCloser) {
	t.Helper()
	h, g := net.Pipe()
	t.Cleanup(func() { h.Close(); g.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		rwc io.ReadWriteCloser
		err error
	}
	gc := make(chan res, 1)
	go func() {
		rwc, err := LinkGuest(ctx, &prefixed{Conn: g, r: io.MultiReader(bytes.NewReader(guestJunk), g)})
		gc <- res{rwc, err}
	}()
	hc, err := LinkHost(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	r := <-gc
	if r.err != nil {
		t.Fatal(r.err)
	}
	return hc, r.rwc
}

type prefixed struct {
	net.Conn
	r io.Reader
}

func (p *prefixed) Read(b []byte) (int, error) { return p.r.Read(b) }

func TestLink(t *testing.T) {
	stale := mustNonce(t)
	tests := []struct {
		name string
		junk []byte
	}{
		{"clean", nil},
		{"yamux leftovers", []byte{0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2, 'h', 'i'}},
		// A whole handshake of an earlier host: the agent answers it with
		// a fresh agent nonce, so the stale start cannot match.
		{"stale records", append(linkRec{kind: linkHostHello, host: stale}.bytes(), linkRec{kind: linkHostStart, host: stale, agent: stale}.bytes()...)},
		{"truncated record", linkRec{kind: linkHostHello, host: stale}.bytes()[:15]},
		{"lone magic byte", []byte{0xff}},
		{"magic and kind only", []byte("\xffBANGERS")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, guest := linkPair(t, tt.junk)
			// Data right behind the preamble arrives intact both ways.
			go host.Write([]byte("to-guest"))
			buf := make([]byte, 8)
			if _, err := io.ReadFull(guest, buf); err != nil || string(buf) != "to-guest" {
				t.Fatalf("guest read %q %v", buf, err)
			}
			go guest.Write([]byte("to-host!"))
			if _, err := io.ReadFull(host, buf); err != nil || string(buf) != "to-host!" {
				t.Fatalf("host read %q %v", buf, err)
			}
		})
	}
}

// A host that replaces another mid-handshake wins; the first host's start
// record is ignored.
func TestLinkGuestFollowsNewestHost(t *testing.T) {
	h, g := net.Pipe()
	defer h.Close()
	defer g.Close()
	n1, n2 := mustNonce(t), mustNonce(t)
	go func() {
		br := bufio.NewReader(h)
		h.Write(linkRec{kind: linkHostHello, host: n1}.bytes())
		a1, _ := scanRecord(br)
		h.Write(linkRec{kind: linkHostHello, host: n2}.bytes())
		a2, _ := scanRecord(br)
		h.Write(linkRec{kind: linkHostStart, host: n1, agent: a1.agent}.bytes()) // superseded
		h.Write(append(linkRec{kind: linkHostStart, host: n2, agent: a2.agent}.bytes(), "go"...))
	}()
	rwc, err := LinkGuest(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(rwc, buf); err != nil || string(buf) != "go" {
		t.Fatalf("read %q %v", buf, err)
	}
}

// The host ignores answers to other nonces (a previous connection's).
func TestLinkHostIgnoresOtherNonces(t *testing.T) {
	h, g := net.Pipe()
	defer h.Close()
	defer g.Close()
	go func() {
		br := bufio.NewReader(g)
		r, err := scanRecord(br)
		if err != nil {
			return
		}
		g.Write(linkRec{kind: linkAgentHello, host: mustNonce(t)}.bytes())
		g.Write(linkRec{kind: linkAgentHello, host: r.host, agent: mustNonce(t)}.bytes())
		go io.Copy(io.Discard, br)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := LinkHost(ctx, h); err != nil {
		t.Fatal(err)
	}
}

// A guest that never answers (early boot) keeps the host waiting until
// ctx ends, resending its hello meanwhile.
func TestLinkTimeouts(t *testing.T) {
	h, g := net.Pipe()
	defer h.Close()
	defer g.Close()
	hellos := make(chan int, 1)
	go func() {
		br := bufio.NewReader(g)
		n := 0
		for {
			if _, err := scanRecord(br); err != nil {
				hellos <- n
				return
			}
			n++
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*linkRepeat)
	defer cancel()
	if _, err := LinkHost(ctx, h); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("host: %v", err)
	}
	h.Close()
	if n := <-hellos; n < 2 {
		t.Fatalf("%d hellos, want repeats", n)
	}

	h2, g2 := net.Pipe()
	defer h2.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := LinkGuest(ctx, g2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("guest: %v", err)
	}
}

// FuzzScanRecord: whatever precedes a real record (stale bytes, torn
// records), the scanner ends on that record and never reports one that
// overlaps it.
func FuzzScanRecord(f *testing.F) {
	f.Add([]byte{}, []byte("0123456789abcdef"))
	f.Add([]byte("\xffBANGERH0123"), []byte("nonce-nonce-nonc"))
	f.Add([]byte("\xffBANGERA\xff\xffBANGERS"), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, junk, seed []byte) {
		want := linkRec{kind: linkHostStart}
		copy(want.host[:], seed)
		if len(seed) > linkNonceSize {
			copy(want.agent[:], seed[linkNonceSize:])
		}
		for i := range linkNonceSize {
			want.host[i] &= 0x7f
			want.agent[i] &= 0x7f
		}
		in := append(append([]byte{}, junk...), want.bytes()...)
		br := bufio.NewReader(bytes.NewReader(in))
		var last linkRec
		for {
			r, err := scanRecord(br)
			if err != nil {
				break
			}
			last = r
		}
		if last != want {
			t.Fatalf("last record %+v, want the real one %+v", last, want)
		}
	})
}
