package egress

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/bangerdev/banger/internal/agentapi"
)

// Defaults of Options.
const (
	DefaultDialTimeout  = 10 * time.Second
	DefaultSniffTimeout = 3 * time.Second
	// MaxSniff bounds the first bytes held back to find a name.
	MaxSniff = 16 << 10
	// MaxDNSQuery bounds one query on a dns stream.
	MaxDNSQuery = 4 << 10
	// headerTimeout bounds reading the open line (and a DNS query): the
	// agent writes it at once.
	headerTimeout = 10 * time.Second
	// writeTimeout bounds the reply line and a denial's payload, so a
	// guest that never reads cannot hold a goroutine.
	writeTimeout = 10 * time.Second
	// denyPeekTimeout bounds the look at a denied stream's first bytes.
	denyPeekTimeout = 500 * time.Millisecond
	// DefaultMaxStreams bounds the streams one VM has open at once.
	DefaultMaxStreams = 512
)

// Resolver looks names up; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Options configure a Gateway.
type Options struct {
	// Resolve maps "host:port" or "host" to the "ip:port" (or "ip") to
	// dial instead of resolving, like curl --resolve. Its targets may be
	// host-local: the user wrote them.
	Resolve map[string]string
	// RootCAs verifies upstream TLS; the gateway passes it to nobody
	// but keeps it here for the broker's construction by the daemon.
	RootCAs *x509.CertPool
	// Policy returns the VM's current policy, its label for the log and
	// messages, and whether the VM's egress goes through the gateway at
	// all (false: every stream is refused).
	Policy func(vmID string) (pol Policy, label string, gateway bool)
	// Record receives one Record per stream, when the stream ends.
	Record func(Record)
	// Broker serves the hosts it intercepts; nil: none are.
	Broker       Interceptor
	DialTimeout  time.Duration
	SniffTimeout time.Duration
	// MaxStreams bounds one VM's open streams (each holds a goroutine,
	// buffers and maybe an upstream socket): a guest must not exhaust
	// the daemon's descriptors. Streams over it are closed at once.
	MaxStreams int
	// Resolver resolves upstream names; nil: net.DefaultResolver.
	Resolver Resolver
	// LocalAddrs lists the host's own addresses, which a name is never
	// dialed at (services on 0.0.0.0 answer there); nil: the addresses
	// of the host's interfaces.
	LocalAddrs func() []netip.Addr
	Logger     *slog.Logger
}

// Gateway judges and carries the egress streams of every VM.
type Gateway struct {
	opts    Options
	resolve map[string]string
	mu      sync.Mutex
	fake    map[string]*FakeIPs
	streams map[string]int // open streams per VM id
	// dial connects upstream (tests replace it).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// New returns a Gateway; Options.Policy must be set.
func New(opts Options) *Gateway {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.SniffTimeout <= 0 {
		opts.SniffTimeout = DefaultSniffTimeout
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = DefaultMaxStreams
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Record == nil {
		opts.Record = func(Record) {}
	}
	res := make(map[string]string, len(opts.Resolve))
	for k, v := range opts.Resolve {
		res[strings.TrimSuffix(strings.ToLower(k), ".")] = v
	}
	if opts.LocalAddrs == nil {
		opts.LocalAddrs = interfaceAddrs()
	}
	d := &net.Dialer{Timeout: opts.DialTimeout}
	return &Gateway{opts: opts, resolve: res, fake: map[string]*FakeIPs{}, streams: map[string]int{}, dial: d.DialContext}
}

// FakeIPs returns the VM's fake address table, creating it.
func (g *Gateway) FakeIPs(vmID string) *FakeIPs {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := g.fake[vmID]
	if f == nil {
		f = NewFakeIPs(DefaultFakeIPs)
		g.fake[vmID] = f
	}
	return f
}

// acquire counts a new stream of VM id; false when it has too many.
func (g *Gateway) acquire(vmID string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.streams[vmID] >= g.opts.MaxStreams {
		return false
	}
	g.streams[vmID]++
	return true
}

func (g *Gateway) release(vmID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.streams[vmID]--; g.streams[vmID] <= 0 {
		delete(g.streams, vmID)
	}
}

// active is VM id's number of open streams.
func (g *Gateway) active(vmID string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.streams[vmID]
}

// Forget drops a VM's fake address table (the VM stopped or was deleted).
func (g *Gateway) Forget(vmID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.fake, vmID)
}

// Handle serves one guest-initiated egress stream of vm and closes s.
// Everything read from s is hostile; Handle records the stream once,
// when it ends. Cancelling ctx cuts the stream.
//
// The agent must forward the client's bytes right after the open line,
// without waiting for the reply: for a connection without a fake
// address the gateway reads them (SNI, Host) before it replies. After a
// refusal it must still pass the gateway's bytes on (the 403 or TLS
// alert). If s has a CloseWrite method it is used to half-close (for a
// yamux stream: Stream.Close, which only sends FIN); without one, s is
// closed once the upstream has finished sending.
func (g *Gateway) Handle(ctx context.Context, vm VMRef, s net.Conn) {
	rec := Record{Time: time.Now(), VMID: vm.ID, VM: vm.Name, Proto: agentapi.EgressKindTCP, Decision: DecisionDeny}
	if !g.acquire(vm.ID) {
		s.Close()
		rec.Note = fmt.Sprintf("too many open streams (%d); stream refused", g.opts.MaxStreams)
		g.opts.Record(rec)
		return
	}
	defer g.release(vm.ID)
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer func() {
		if p := recover(); p != nil {
			g.opts.Logger.Error("egress stream panicked", "vm", vm.Name, "panic", p)
			rec.Decision, rec.Note = DecisionDeny, "internal error"
		}
		stop()
		s.Close()
		rec.Duration = time.Since(rec.Time)
		g.opts.Record(rec)
	}()
	br := bufio.NewReaderSize(s, MaxSniff)
	_ = s.SetReadDeadline(time.Now().Add(headerTimeout))
	var open agentapi.EgressOpen
	if err := agentapi.ReadEgressLine(br, &open); err != nil {
		rec.Note = truncate("bad open line: "+err.Error(), 200)
		return
	}
	rec.Session = printable(open.Session, 128)
	rec.Process = printable(open.Process, 64)
	rec.PID = open.PID
	pol, label, on := g.opts.Policy(vm.ID)
	rec.Policy = label
	switch open.Kind {
	case agentapi.EgressKindDNS:
		rec.Proto = agentapi.EgressKindDNS
		if !on {
			rec.Note = "egress gateway off for this VM"
			return
		}
		g.handleDNS(vm, s, br, pol, label, &rec)
	case agentapi.EgressKindTCP:
		g.handleTCP(ctx, vm, s, br, pol, label, on, open.Dst, &rec)
	default:
		rec.Note = truncate("unknown stream kind "+strconv.Quote(open.Kind), 100)
	}
}

func (g *Gateway) handleDNS(vm VMRef, s net.Conn, br *bufio.Reader, pol Policy, label string, rec *Record) {
	var lenb [2]byte
	if _, err := io.ReadFull(br, lenb[:]); err != nil {
		rec.Note = "malformed query: no length"
		return
	}
	n := int(binary.BigEndian.Uint16(lenb[:]))
	if n == 0 || n > MaxDNSQuery {
		rec.Note = fmt.Sprintf("malformed query: length %d", n)
		return
	}
	q := make([]byte, n)
	if _, err := io.ReadFull(br, q); err != nil {
		rec.Note = "malformed query: short"
		return
	}
	answer, r := AnswerDNS(q, pol, g.FakeIPs(vm.ID), vm.Name, label)
	rec.Name, rec.Addr, rec.Port = r.Name, r.Addr, r.Port
	rec.Decision, rec.Rule, rec.Note = r.Decision, r.Rule, r.Note
	rec.BytesUp = int64(n)
	if answer == nil {
		return
	}
	_ = s.SetWriteDeadline(time.Now().Add(writeTimeout))
	out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(answer)), uint16(len(answer)))
	if _, err := s.Write(append(out, answer...)); err == nil {
		rec.BytesDown = int64(len(answer))
	}
}

const leakNote = "a credential placeholder was sent to a host that is not brokered; connection cut"

// errRefused marks an upstream the gateway will not dial for safety; the
// connection is denied, not failed.
type errRefused struct{ msg string }

func (e *errRefused) Error() string { return e.msg }

func (g *Gateway) handleTCP(ctx context.Context, vm VMRef, s net.Conn, br *bufio.Reader, pol Policy, label string, on bool, dstText string, rec *Record) {
	dst, err := netip.ParseAddrPort(dstText)
	if err != nil || dst.Port() == 0 || !dst.Addr().IsValid() {
		rec.Note = truncate("bad destination "+strconv.Quote(dstText), 100)
		g.deny(s, br, "banger egress: the agent sent no valid destination", "", false)
		return
	}
	ip := dst.Addr().Unmap().WithZone("")
	port := dst.Port()
	rec.Addr, rec.Port = ip.String(), port
	if !on {
		rec.Note = "egress gateway off for this VM"
		g.deny(s, br, "banger egress: this VM's egress does not go through the gateway", "", false)
		return
	}

	var name, kind string
	sniffed := false
	checkIP := ip // range rules look at the address only when it is real
	if FakeRange.Contains(ip) {
		checkIP = netip.Addr{}
		n, ok := g.FakeIPs(vm.ID).Name(ip)
		if !ok {
			rec.Note = "fake address not mapped (an expired DNS answer)"
			g.deny(s, br, fmt.Sprintf("banger egress: %s is no longer mapped to a name for VM %q; look the name up again", ip, vm.Name), "", false)
			return
		}
		name = n
	} else if pol.Decide("", ip, port).Allow && !pol.hasNameDeny() {
		// The address alone decides: do not hold back a client that
		// waits for the server to speak first (SSH, SMTP).
	} else {
		name, kind = g.peekName(s, br, g.opts.SniffTimeout)
		sniffed = true
	}
	rec.Name = name
	d := pol.Decide(name, checkIP, port)
	rec.Rule = d.Rule
	target := name
	if target == "" {
		target = ip.String()
	}
	if !d.Allow {
		g.deny(s, br, DenyMessage(vm.Name, label, target, port), kind, sniffed)
		return
	}
	rec.Decision = DecisionAllow

	dial := func(ctx context.Context) (net.Conn, error) {
		return g.dialUpstream(ctx, pol, name, ip, port, d)
	}
	if !d.ByAddr && g.opts.Broker != nil && g.opts.Broker.Intercepts(vm, name, port) {
		if err := g.reply(s, agentapi.EgressReply{Allow: true}); err != nil {
			rec.Note = "write reply: " + err.Error()
			return
		}
		_ = s.SetReadDeadline(time.Time{})
		if err := g.opts.Broker.Serve(ctx, vm, &bufConn{Conn: s, r: br}, name, port, dial, rec); err != nil && rec.Note == "" {
			rec.Note = truncate("broker: "+err.Error(), 200)
		}
		return
	}

	if sniffed && g.opts.Broker != nil {
		// The first bytes are at hand: a placeholder in them never gets
		// as far as a connection upstream.
		if b, _ := br.Peek(br.Buffered()); g.opts.Broker.Leak(vm, b) {
			rec.Decision, rec.Note = DecisionLeak, leakNote
			g.deny(s, br, fmt.Sprintf("banger egress: a credential placeholder was sent to %s:%d, which is not a brokered host; the connection was blocked", target, port), kind, true)
			return
		}
	}
	up, err := dial(ctx)
	if err != nil {
		var refused *errRefused
		if errors.As(err, &refused) {
			rec.Decision = DecisionDeny
			rec.Note = truncate(refused.msg, 200)
			g.deny(s, br, "banger egress: "+refused.msg, kind, sniffed)
			return
		}
		rec.Note = truncate("upstream: "+err.Error(), 200)
		_ = g.reply(s, agentapi.EgressReply{Message: truncate(fmt.Sprintf("banger egress: cannot reach %s:%d: %v", target, port, err), 1024)})
		return
	}
	defer up.Close()
	if err := g.reply(s, agentapi.EgressReply{Allow: true}); err != nil {
		rec.Note = "write reply: " + err.Error()
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	var leak func([]byte) bool
	if g.opts.Broker != nil {
		leak = func(b []byte) bool { return g.opts.Broker.Leak(vm, b) }
	}
	var front func(string) bool
	if fakeName := name; FakeRange.Contains(ip) {
		// The upstream is the fake address's name, but shared servers
		// (CDNs) route by SNI/Host: a different name in the first bytes
		// would reach a host the policy never allowed (domain fronting).
		front = func(n string) bool {
			return n == "" || n == fakeName || pol.Decide(n, netip.Addr{}, port).Allow
		}
	}
	up1, down, leaked, fronted := splice(s, br, up, leak, front)
	rec.BytesUp, rec.BytesDown = up1, down
	switch {
	case leaked:
		rec.Decision, rec.Note = DecisionLeak, leakNote
	case fronted != "":
		rec.Decision = DecisionDeny
		rec.Note = truncate(fmt.Sprintf("the connection to %s named %s in its first bytes, which the policy does not allow; cut", name, fronted), 200)
	}
}

// peekName holds back the stream's first bytes (up to MaxSniff, for at
// most timeout) until Sniff can name the host. They stay in br.
func (g *Gateway) peekName(s net.Conn, br *bufio.Reader, timeout time.Duration) (name, kind string) {
	_ = s.SetReadDeadline(time.Now().Add(timeout))
	defer s.SetReadDeadline(time.Time{})
	return sniffBuffered(br)
}

// sniffBuffered reads into br (up to MaxSniff) until Sniff can name the
// host or the stream ends or fails.
func sniffBuffered(br *bufio.Reader) (name, kind string) {
	for {
		b, _ := br.Peek(br.Buffered())
		var done bool
		name, kind, done = sniff(b)
		if done || len(b) >= MaxSniff {
			return name, kind
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			b, _ = br.Peek(br.Buffered())
			name, kind, _ = sniff(b)
			return name, kind
		}
	}
}

func (g *Gateway) reply(s net.Conn, r agentapi.EgressReply) error {
	_ = s.SetWriteDeadline(time.Now().Add(writeTimeout))
	defer s.SetWriteDeadline(time.Time{})
	return agentapi.WriteEgressLine(s, r)
}

// tlsAccessDenied is a fatal TLS alert record, access_denied (49).
var tlsAccessDenied = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49}

// deny writes the refusal line, then what the client will understand:
// an HTTP 403 with msg as its body, or a TLS alert.
func (g *Gateway) deny(s net.Conn, br *bufio.Reader, msg, kind string, sniffed bool) {
	if g.reply(s, agentapi.EgressReply{Message: msg}) != nil {
		return
	}
	if !sniffed {
		// Only a short look, for the payload: HTTP and TLS clients speak
		// at once, and a client waiting for the server should not wait
		// long for its refusal.
		_, kind = g.peekName(s, br, min(g.opts.SniffTimeout, denyPeekTimeout))
	}
	_ = s.SetWriteDeadline(time.Now().Add(writeTimeout))
	switch kind {
	case KindHTTP:
		body := msg + "\n"
		fmt.Fprintf(s, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\nX-Banger-Egress: denied\r\n\r\n%s", len(body), body)
	case KindTLS:
		_, _ = s.Write(tlsAccessDenied)
	}
}

// dialUpstream dials the checked name (resolved on the host, or through
// Options.Resolve), or the guest's address when an address rule decided.
// Host-local and private addresses are refused unless the user named
// them: in Resolve, or in an address rule no wider than their range.
func (g *Gateway) dialUpstream(ctx context.Context, pol Policy, name string, ip netip.Addr, port uint16, d Decision) (net.Conn, error) {
	if d.ByAddr || name == "" {
		if r, ok := internalRange(ip); ok && !(d.rule.Prefix.IsValid() && d.rule.Prefix.Bits() >= r.Bits() && r.Contains(d.rule.Prefix.Addr())) {
			return nil, &errRefused{fmt.Sprintf("%s is a host-local or private address (%s); only an allow rule naming it (or a range inside %s) reaches it", ip, r, r)}
		}
		if g.isLocal(ip) && !(d.rule.Prefix.IsSingleIP() && d.rule.Prefix.Addr() == ip) {
			return nil, &errRefused{fmt.Sprintf("%s is an address of the host itself; only an allow rule naming exactly it reaches it", ip)}
		}
		return g.dial(ctx, "tcp", netip.AddrPortFrom(ip, port).String())
	}
	ps := strconv.Itoa(int(port))
	if t, ok := g.resolve[name+":"+ps]; ok {
		return g.dial(ctx, "tcp", withPort(t, ps))
	}
	if t, ok := g.resolve[name]; ok {
		return g.dial(ctx, "tcp", withPort(t, ps))
	}
	addrs, err := g.opts.Resolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	var firstErr error
	tried := 0
	for _, a := range addrs {
		a = a.Unmap()
		if _, internal := internalRange(a); internal || g.isLocal(a) {
			continue
		}
		if rule, denied := pol.DeniesAddr(a, port); denied {
			firstErr = &errRefused{fmt.Sprintf("%s resolves to %s, which rule %q denies", name, a, rule)}
			continue
		}
		tried++
		c, err := g.dial(ctx, "tcp", netip.AddrPortFrom(a, port).String())
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if tried == 0 && firstErr == nil {
		return nil, &errRefused{fmt.Sprintf("%s resolves only to host-local or private addresses (or the host's own); map it in egress.resolve if that is meant", name)}
	}
	return nil, fmt.Errorf("dial %s: %w", name, firstErr)
}

func (g *Gateway) isLocal(a netip.Addr) bool {
	a = a.Unmap()
	for _, l := range g.opts.LocalAddrs() {
		if l.Unmap() == a {
			return true
		}
	}
	return false
}

// interfaceAddrs returns a LocalAddrs reading the host's interface
// addresses, at most every few seconds.
func interfaceAddrs() func() []netip.Addr {
	var mu sync.Mutex
	var cached []netip.Addr
	var at time.Time
	return func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < 5*time.Second {
			return cached
		}
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return cached // the last known list beats none
		}
		cached = cached[:0:0]
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				cached = append(cached, p.Addr().Unmap().WithZone(""))
			}
		}
		at = time.Now()
		return cached
	}
}

func withPort(target, port string) string {
	if _, _, err := net.SplitHostPort(target); err == nil {
		return target
	}
	return net.JoinHostPort(strings.Trim(target, "[]"), port)
}

// internalRanges are the addresses a name from the outside must never
// lead the host to: its own services, its LANs, the fake range.
var internalRanges = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b:1::/48",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// internalRange returns the internal range holding a, if any.
func internalRange(a netip.Addr) (netip.Prefix, bool) {
	a = a.Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		return internalRange(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
	}
	for _, p := range internalRanges {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// printable is s, cut to n bytes, with every rune that is not printable
// (terminal escapes, bidi overrides) replaced by '?': the guest names its
// own process and session, and the log is printed in host terminals.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, truncate(s, n))
	return strings.ToValidUTF8(s, "?")
}

// bufConn reads through the bufio.Reader that holds the stream's first
// bytes, so whoever takes the stream over sees them again.
type bufConn struct {
	net.Conn
	r io.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite half-closes when the underlying stream can.
func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// leakWindow is how much of a plaintext stream's start is shown to the
// broker's Leak check; past it the splice does no per-byte work.
const leakWindow = MaxSniff

// splice carries bytes both ways until both directions end, half-closing
// each side as its peer finishes. With leak set, the first leakWindow
// bytes to the upstream are checked before they are sent, and the
// connection is cut when they carry a placeholder. With front set,
// nothing goes upstream before the first bytes' SNI/Host name (if any)
// passes it; a refused name is returned in fronted. Bytes from the
// upstream flow meanwhile, so server-first protocols are not held up.
func splice(guest net.Conn, guestR *bufio.Reader, up net.Conn, leak func([]byte) bool, front func(string) bool) (bytesUp, bytesDown int64, leaked bool, fronted string) {
	var once sync.Once
	closeBoth := func() { once.Do(func() { guest.Close(); up.Close() }) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		if front != nil {
			if n, _ := sniffBuffered(guestR); !front(n) {
				fronted = n
				closeBoth()
				return
			}
		}
		var err error
		if leak != nil {
			bytesUp, leaked, err = copyChecked(up, guestR, leak)
		}
		if err == nil && !leaked {
			var n int64
			n, err = io.Copy(up, guestR)
			bytesUp += n
		}
		if leaked || err != nil {
			closeBoth()
			return
		}
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			closeBoth()
		}
	}()
	bytesDown, err := io.Copy(guest, up)
	if err != nil {
		closeBoth()
	} else if cw, ok := guest.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		// Without a half-close the guest would wait for an end that
		// never comes.
		closeBoth()
	}
	<-done
	closeBoth()
	return bytesUp, bytesDown, leaked, fronted
}

// copyChecked copies the first leakWindow bytes, checking all bytes seen
// so far before each chunk goes out. It returns at the window's end or
// at EOF (err nil, and the io.Copy that follows sees EOF at once).
func copyChecked(dst io.Writer, src io.Reader, leak func([]byte) bool) (int64, bool, error) {
	seen := make([]byte, 0, 4096)
	buf := make([]byte, 4096)
	var n int64
	for len(seen) < leakWindow {
		m, err := src.Read(buf[:min(len(buf), leakWindow-len(seen))])
		if m > 0 {
			seen = append(seen, buf[:m]...)
			if leak(seen) {
				return n, true, nil
			}
			w, werr := dst.Write(buf[:m])
			n += int64(w)
			if werr != nil {
				return n, false, werr
			}
		}
		if err == io.EOF {
			return n, false, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}
