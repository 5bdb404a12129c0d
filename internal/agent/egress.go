package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/agentapi"
)

// The guest side of the egress gateway. nftables (egress_nft.go) sends
// every outbound TCP connection to EgressTCPPort and every DNS query to
// EgressDNSPort on loopback; the agent hands each to the host on its own
// guest-initiated stream of the agent channel, which is the guest's only
// way out. The host decides; the agent only carries bytes and says who
// connected (egress_proc.go).

// Bounds of the guest side.
const (
	// attributeBudget bounds the /proc scan for a connection's process:
	// a full scan took 4 to 48 ms on a 2-CPU guest with 90 processes.
	attributeBudget = 100 * time.Millisecond
	// egressReplyTimeout bounds the wait for the host's EgressReply: the
	// host may wait up to 5 s for the client's first bytes and then dial
	// upstream.
	egressReplyTimeout = 30 * time.Second
	// denyDrainTimeout bounds the copy of a denial (403 or TLS alert).
	denyDrainTimeout = 10 * time.Second
	// lingerTimeout bounds the wait for a client to close after its
	// answer (see lingerClose).
	lingerTimeout = 2 * time.Second
	dnsTimeout    = 5 * time.Second
	maxDNSMessage = 4096
	// maxDNSInFlight bounds concurrent DNS queries (each holds a
	// goroutine and a stream).
	maxDNSInFlight = 256
)

// ErrNoHost is returned by a stream opener while no host is connected.
var ErrNoHost = errors.New("no host connected")

// Egress carries redirected connections and DNS queries to the host.
type Egress struct {
	log *slog.Logger
	// open opens a guest-initiated stream to the host.
	open func() (net.Conn, error)
	// origDst returns a redirected connection's original destination
	// (SO_ORIGINAL_DST); tests replace it.
	origDst func(c net.Conn) (netip.AddrPort, error)
	// attribute says who owns a client socket; tests replace it.
	attribute func(proto string, local, remote netip.AddrPort) attribution
	dnsSlots  chan struct{}
}

// NewEgress returns an Egress that opens host streams with open.
func NewEgress(log *slog.Logger, open func() (net.Conn, error)) *Egress {
	if log == nil {
		log = slog.Default()
	}
	e := &Egress{
		log:      log.With("component", "egress"),
		open:     open,
		origDst:  originalDst,
		dnsSlots: make(chan struct{}, maxDNSInFlight),
	}
	var recent recentPIDs
	e.attribute = func(proto string, local, remote netip.AddrPort) attribution {
		a := attribute("/proc", proto, local, remote, attributeBudget, recent.list())
		recent.add(a.PID)
		return a
	}
	return e
}

// Listen binds the egress listeners on loopback (127.0.0.1 and ::1,
// where the output-hook redirect delivers IPv4 and IPv6) and serves them
// until ctx ends. A family that cannot be bound (no IPv6 in the guest) is
// logged and skipped; its redirected connections are refused.
func (e *Egress) Listen(ctx context.Context) error {
	var wg sync.WaitGroup
	bound := 0
	for _, host := range []string{"127.0.0.1", "::1"} {
		tcpAddr := net.JoinHostPort(host, strconv.Itoa(agentapi.EgressTCPPort))
		dnsAddr := net.JoinHostPort(host, strconv.Itoa(agentapi.EgressDNSPort))
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", tcpAddr)
		if err != nil {
			e.log.Warn("egress listener", "addr", tcpAddr, "err", err)
			continue
		}
		dln, err := lc.Listen(ctx, "tcp", dnsAddr)
		if err != nil {
			ln.Close()
			e.log.Warn("egress dns listener", "addr", dnsAddr, "err", err)
			continue
		}
		pc, err := lc.ListenPacket(ctx, "udp", dnsAddr)
		if err != nil {
			ln.Close()
			dln.Close()
			e.log.Warn("egress dns listener", "addr", dnsAddr, "err", err)
			continue
		}
		bound++
		wg.Add(3)
		go func() { defer wg.Done(); e.ServeTCP(ctx, ln) }()
		go func() { defer wg.Done(); e.ServeDNSTCP(ctx, dln) }()
		go func() { defer wg.Done(); e.ServeDNSUDP(ctx, pc) }()
	}
	if bound == 0 {
		return fmt.Errorf("egress: no listener could be bound on port %d", agentapi.EgressTCPPort)
	}
	e.log.Info("egress gateway listening", "tcp_port", agentapi.EgressTCPPort, "dns_port", agentapi.EgressDNSPort)
	wg.Wait()
	return ctx.Err()
}

// ServeTCP hands every connection ln accepts to the host, until ctx ends.
func (e *Egress) ServeTCP(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and friends: do not spin.
			e.log.Warn("egress accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go e.handleTCP(ctx, c)
	}
}

// handleTCP carries one redirected client connection. The client's bytes
// flow to the host at once: the host reads the first of them (TLS SNI,
// HTTP Host) before it answers.
func (e *Egress) handleTCP(ctx context.Context, c net.Conn) {
	defer c.Close()
	dst, err := e.origDst(c)
	if err != nil {
		e.log.Warn("egress: no original destination", "err", err)
		return
	}
	peer := addrPortOf(c.RemoteAddr())
	t0 := time.Now()
	att := e.attribute("tcp", peer, dst)
	log := e.log.With("dst", dst.String(), "pid", att.PID, "process", att.Process, "session", att.Session)
	log.Debug("egress connection", "peer", peer.String(), "attribution_took", time.Since(t0), "attribution_miss", att.miss)
	s, err := e.open()
	if err != nil {
		// No host: the connection fails at once rather than hanging.
		log.Debug("egress: no host stream", "err", err)
		return
	}
	defer s.Close()
	open := agentapi.EgressOpen{Kind: agentapi.EgressKindTCP, Dst: dst.String(), PID: att.PID, Process: att.Process, Session: att.Session}
	if err := agentapi.WriteEgressLine(s, open); err != nil {
		log.Debug("egress: write open line", "err", err)
		return
	}
	up := make(chan struct{})
	go func() {
		defer close(up)
		if _, err := io.Copy(s, c); err == nil {
			closeWrite(s)
			return
		}
		// The host stopped reading: keep draining the client until it
		// closes (or the linger deadline), so that closing c never
		// resets what the client has not read yet (a 403).
		io.Copy(io.Discard, c)
	}()
	br := bufio.NewReaderSize(s, 32<<10)
	_ = s.SetReadDeadline(time.Now().Add(egressReplyTimeout))
	var reply agentapi.EgressReply
	if err := agentapi.ReadEgressLine(br, &reply); err != nil {
		log.Debug("egress: read reply", "err", err)
		return
	}
	if !reply.Allow {
		// The agent's stderr is the guest's journal, where whoever
		// wonders why the connection failed can read why.
		log.Warn("egress denied", "message", reply.Message)
		_ = s.SetReadDeadline(time.Now().Add(denyDrainTimeout))
		io.Copy(c, br)
		lingerClose(ctx, c, up)
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	if _, err := io.Copy(c, br); err != nil {
		// The host stream broke (reset, session gone): so does the
		// connection.
		return
	}
	closeWrite(c)
	select {
	case <-up:
	case <-ctx.Done():
	}
}

// lingerClose ends a connection whose answer is complete: FIN first,
// then a short wait for the client to close its side while up drains
// what it still sends. Closing a socket with unread input sends RST,
// which can destroy the answer before the client reads it.
func lingerClose(ctx context.Context, c net.Conn, up <-chan struct{}) {
	closeWrite(c)
	_ = c.SetReadDeadline(time.Now().Add(lingerTimeout))
	select {
	case <-up:
	case <-ctx.Done():
	}
}

// ServeDNSUDP answers every query pc receives through the host, until ctx
// ends. Replies leave from the socket the query arrived on, so conntrack
// turns their source back into the resolver the client asked.
func (e *Egress) ServeDNSUDP(ctx context.Context, pc net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	buf := make([]byte, maxDNSMessage)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		select {
		case e.dnsSlots <- struct{}{}:
		default:
			// Too many in flight: drop, the resolver retries.
			continue
		}
		go func() {
			defer func() { <-e.dnsSlots }()
			att := e.attribute("udp", addrPortOf(addr), netip.AddrPort{})
			ans, err := e.queryDNS(ctx, q, att)
			if err != nil {
				// SERVFAIL at once: a dropped query would make the
				// resolver retry for seconds.
				e.log.Debug("egress dns", "err", err)
				if ans = dnsErrorAnswer(q, dnsRcodeServFail); ans == nil {
					return
				}
			}
			pc.WriteTo(ans, addr)
		}()
	}
}

// ServeDNSTCP answers DNS over TCP (length-prefixed queries, several per
// connection) through the host, until ctx ends.
func (e *Egress) ServeDNSTCP(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			var att attribution
			if dst, err := e.origDst(c); err == nil {
				att = e.attribute("tcp", addrPortOf(c.RemoteAddr()), dst)
			}
			for {
				_ = c.SetReadDeadline(time.Now().Add(dnsTimeout))
				q, err := readDNSFrame(c)
				if err != nil {
					return
				}
				ans, err := e.queryDNS(ctx, q, att)
				if err != nil {
					e.log.Debug("egress dns", "err", err)
					if ans = dnsErrorAnswer(q, dnsRcodeServFail); ans == nil {
						return
					}
				}
				_ = c.SetWriteDeadline(time.Now().Add(dnsTimeout))
				if err := writeDNSFrame(c, ans); err != nil {
					return
				}
			}
		}()
	}
}

// queryDNS sends one query to the host on its own stream and returns the
// answer.
func (e *Egress) queryDNS(ctx context.Context, q []byte, att attribution) ([]byte, error) {
	if len(q) == 0 || len(q) > maxDNSMessage {
		return nil, fmt.Errorf("dns query of %d bytes", len(q))
	}
	s, err := e.open()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	deadline := time.Now().Add(dnsTimeout)
	_ = s.SetDeadline(deadline)
	open := agentapi.EgressOpen{Kind: agentapi.EgressKindDNS, PID: att.PID, Process: att.Process, Session: att.Session}
	if err := agentapi.WriteEgressLine(s, open); err != nil {
		return nil, fmt.Errorf("send dns query: %w", err)
	}
	if err := writeDNSFrame(s, q); err != nil {
		return nil, fmt.Errorf("send dns query: %w", err)
	}
	ans, err := readDNSFrame(s)
	if err != nil {
		return nil, fmt.Errorf("read dns answer: %w", err)
	}
	return ans, nil
}

// DNS response codes the agent answers with itself.
const (
	dnsRcodeServFail = 2
	dnsRcodeNXDomain = 3
)

// dnsErrorAnswer answers query q with rcode and no records: q's header
// and question, flags turned into a response. nil when q is too short or
// its question malformed.
func dnsErrorAnswer(q []byte, rcode byte) []byte {
	if len(q) < 12 || q[2]&0x80 != 0 {
		return nil
	}
	i := 12
	if binary.BigEndian.Uint16(q[4:6]) > 0 {
		for i < len(q) && q[i] != 0 {
			if q[i]&0xc0 != 0 {
				return nil // no compression in a question
			}
			i += int(q[i]) + 1
		}
		i += 5 // root label, qtype, qclass
		if i > len(q) {
			return nil
		}
	}
	a := append([]byte(nil), q[:i]...)
	a[2] = a[2]&0x79 | 0x80  // QR, keep opcode and RD, no AA or TC
	a[3] = 0x80 | rcode&0x0f // RA
	if i > 12 {
		a[4], a[5] = 0, 1
	}
	clear(a[6:12]) // no answer, authority or additional records
	return a
}

// readDNSFrame reads one DNS-over-TCP message: a 2-byte big-endian
// length, then the message, at most maxDNSMessage bytes.
func readDNSFrame(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n == 0 || n > maxDNSMessage {
		return nil, fmt.Errorf("dns message of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func writeDNSFrame(w io.Writer, m []byte) error {
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	_, err := w.Write(b)
	return err
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// originalDst asks conntrack for a redirected TCP connection's
// destination before the redirect: SO_ORIGINAL_DST at SOL_IP (a
// sockaddr_in) or IP6T_SO_ORIGINAL_DST at SOL_IPV6 (a sockaddr_in6),
// by the family of the socket.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	level, opt := unix.SOL_IP, unix.SO_ORIGINAL_DST
	if !addrPortOf(tc.LocalAddr()).Addr().Unmap().Is4() {
		level, opt = unix.SOL_IPV6, ip6tSoOriginalDst
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var buf [unix.SizeofSockaddrInet6]byte
	l := uint32(len(buf))
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	if errno != 0 {
		return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt: %w", errno)
	}
	return parseSockaddr(buf[:min(int(l), len(buf))])
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/
// ip6_tables.h), which x/sys/unix does not name.
const ip6tSoOriginalDst = 80

// parseSockaddr decodes a sockaddr_in or sockaddr_in6 as the kernel
// writes it (family in host order, port big-endian).
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, errors.New("short sockaddr")
	}
	switch binary.NativeEndian.Uint16(b) {
	case unix.AF_INET:
		if len(b) < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}, errors.New("short sockaddr_in")
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), nil
	case unix.AF_INET6:
		if len(b) < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, errors.New("short sockaddr_in6")
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[2:4])), nil
	}
	return netip.AddrPort{}, fmt.Errorf("sockaddr family %d", binary.NativeEndian.Uint16(b))
}

// ServeEgress runs the guest side of the egress gateway for srv's host
// sessions until ctx ends: it (re)programs the redirect, which init
// already did at boot, and serves the listeners.
func ServeEgress(ctx context.Context, log *slog.Logger, srv *Server) error {
	if err := applyEgressRules(); err != nil {
		log.Error("egress redirect", "err", err)
	}
	return NewEgress(log, srv.OpenHostStream).Listen(ctx)
}
