// Package broker is the credential broker: real secrets stay on the
// host. The guest's auth files and API-key variables hold placeholders
// (Rewrite); for the hosts of the broker table (Table) the gateway hands
// the guest's connection to the Broker, which terminates TLS with this
// instance's CA, swaps placeholders in the allowed headers for the
// current real values read from the host's files, refreshes OAuth tokens
// on the host and answers the guest with placeholders. A placeholder
// anywhere else is a leak: blocked and recorded.
//
// Real values are read when a request needs them and never logged;
// errors name the file, never its content.
package broker

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bangerdev/banger/internal/egress"
)

const (
	handshakeTimeout = 10 * time.Second
	maxHeaderBytes   = 64 << 10
	// maxTokenBody bounds a token endpoint request or response body;
	// they are a few hundred bytes.
	maxTokenBody = 64 << 10
	// maxHostFile bounds a host auth file read at request time.
	maxHostFile = 1 << 20
	// refreshTimeout bounds one upstream refresh; it runs on its own
	// context so one guest hanging up does not fail the VMs waiting on it.
	refreshTimeout = 30 * time.Second
	// reuseMargin: a host token changed since a VM last got it is handed
	// to that VM instead of refreshing again, if it lives this much longer.
	reuseMargin = time.Minute
	// minRefreshInterval: how soon after an upstream refresh of a
	// credential another guest request refreshes it upstream again.
	minRefreshInterval = time.Minute
)

// Options configure a Broker.
type Options struct {
	CA *CA
	// RootCAs verify upstreams: the system roots plus the configured
	// upstream_ca_file; nil means the system roots.
	RootCAs *x509.CertPool
	// Getenv reads the real value of an env secret; nil is os.Getenv.
	Getenv func(string) string
	Log    *slog.Logger
	Now    func() time.Time
}

// Broker implements egress.Interceptor.
type Broker struct {
	opts Options
	log  *slog.Logger

	mu  sync.RWMutex
	vms map[string]*Secrets // by VM ID
	// ids maps a placeholder's marker+hex to its VM and secret, for
	// every VM: leak checks look across VMs.
	ids map[string]owned
	// seen is, per VM and credential, a hash of the refresh token the
	// VM's placeholders last stood for; a different token in the host
	// file means someone refreshed since, and the VM can just have it.
	seen map[string][32]byte
	// lastResp keeps, per credential, the last token response (tokens
	// blanked) as the template for answering a VM from the host file.
	lastResp map[string]map[string]any
	// lastUpstream is, per credential, when the broker last refreshed it
	// upstream. Within minRefreshInterval a guest asking again gets the
	// current token instead: a hostile VM cannot keep rotating the
	// host's tokens (each rotation can cost the host's own agents their
	// session).
	lastUpstream       map[string]time.Time
	minRefreshInterval time.Duration

	refreshes flightGroup
	fileMu    sync.Mutex
}

type owned struct {
	vmID string
	sec  Secret
}

var _ egress.Interceptor = (*Broker)(nil)

// New makes a Broker with no VMs.
func New(opts Options) *Broker {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Broker{
		opts:     opts,
		log:      opts.Log.With("component", "broker"),
		vms:      map[string]*Secrets{},
		ids:      map[string]owned{},
		seen:     map[string][32]byte{},
		lastResp: map[string]map[string]any{},

		lastUpstream:       map[string]time.Time{},
		minRefreshInterval: minRefreshInterval,
	}
}

// SetVM registers (or replaces) a VM's brokered secrets; nil or empty
// secrets remove the VM. Call it whenever the VM is seeded or the daemon
// starts with the VM running.
func (b *Broker) SetVM(vm egress.VMRef, s *Secrets) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.vms[vm.ID]; old != nil {
		for _, e := range old.Entries {
			delete(b.ids, placeholderID(e.Placeholder))
			delete(b.seen, vm.ID+"|"+credKey(e))
		}
		delete(b.vms, vm.ID)
	}
	if s == nil || len(s.Entries) == 0 {
		return
	}
	b.vms[vm.ID] = s
	for _, e := range s.Entries {
		if id := placeholderID(e.Placeholder); id != "" {
			b.ids[id] = owned{vmID: vm.ID, sec: e}
		}
		if e.Role == RoleRefresh {
			if v, err := b.realValue(e); err == nil {
				b.seen[vm.ID+"|"+credKey(e)] = sha256.Sum256([]byte(v))
			}
		}
	}
}

// RemoveVM forgets a VM (deleted).
func (b *Broker) RemoveVM(vm egress.VMRef) { b.SetVM(vm, nil) }

// Intercepts implements egress.Interceptor: port 443 of a broker table
// host, for a VM that has a secret of that host's service.
func (b *Broker) Intercepts(vm egress.VMRef, name string, port uint16) bool {
	if port != BrokeredPort {
		return false
	}
	h := lookupHost(name)
	if h == nil {
		return false
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	s := b.vms[vm.ID]
	if s == nil {
		return false
	}
	for _, e := range s.Entries {
		if e.Service == h.Service {
			return true
		}
	}
	return false
}

// Leak implements egress.Interceptor. It reports a placeholder of ANY
// VM, not only vm's: a VM holding another VM's placeholder is up to
// something either way.
func (b *Broker) Leak(vm egress.VMRef, p []byte) bool {
	_, found := b.findPlaceholder(string(p))
	return found
}

// findPlaceholder returns the first known placeholder in s.
func (b *Broker) findPlaceholder(s string) (owned, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for i := 0; ; {
		j := strings.Index(s[i:], Marker)
		if j < 0 {
			return owned{}, false
		}
		start := i + j
		end := start + len(Marker) + idHexLen
		if end <= len(s) {
			if o, ok := b.ids[s[start:end]]; ok {
				return o, true
			}
		}
		i = start + len(Marker)
	}
}

func placeholderID(ph string) string {
	i := strings.Index(ph, Marker)
	if i < 0 || len(ph) < i+len(Marker)+idHexLen {
		return ""
	}
	return ph[i : i+len(Marker)+idHexLen]
}

// credKey names a credential on the host, across VMs: the file and the
// JSON object holding it (or the variable).
func credKey(s Secret) string {
	if s.Env != "" {
		return "env:" + s.Env
	}
	parent := s.Path
	if s.Role != RoleAPIKey && len(parent) > 0 {
		parent = parent[:len(parent)-1]
	}
	return s.File + "#" + strings.Join(parent, ".")
}

// realValue reads the secret's current value on the host.
func (b *Broker) realValue(s Secret) (string, error) {
	if s.Env != "" {
		v := b.opts.Getenv(s.Env)
		if v == "" {
			return "", fmt.Errorf("%s is not set in the daemon's environment", s.Env)
		}
		return v, nil
	}
	doc, err := readHostJSON(s.File)
	if err != nil {
		return "", err
	}
	v, ok := lookupPath(doc, s.Path)
	str, isStr := v.(string)
	if !ok || !isStr || str == "" {
		return "", fmt.Errorf("%s has no %s", s.File, strings.Join(s.Path, "."))
	}
	return str, nil
}

func readHostJSON(p string) (any, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxHostFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(data) > maxHostFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, maxHostFile)
	}
	doc, err := decodeJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s is not valid JSON", p) // never the parser's message: it quotes content
	}
	return doc, nil
}

// Serve implements egress.Interceptor.
func (b *Broker) Serve(ctx context.Context, vm egress.VMRef, guest net.Conn, name string, port uint16, dial func(ctx context.Context) (net.Conn, error), rec *egress.Record) error {
	defer guest.Close()
	host := lookupHost(name)
	if host == nil {
		return fmt.Errorf("%s is not in the broker table", name)
	}
	leaf, err := b.opts.CA.Leaf(host.Name)
	if err != nil {
		return err
	}
	tc := tls.Server(guest, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return fmt.Errorf("guest tls handshake for %s: %w", host.Name, err)
	}

	var up, down atomic.Int64
	authority := host.Name
	if port != BrokeredPort {
		authority = net.JoinHostPort(host.Name, strconv.Itoa(int(port)))
	}
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			cc := &countConn{Conn: c, read: &down, written: &up}
			uc := tls.Client(cc, &tls.Config{
				ServerName: host.Name,
				RootCAs:    b.opts.RootCAs,
				NextProtos: []string{"http/1.1"},
				MinVersion: tls.VersionTLS12,
			})
			if err := uc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, fmt.Errorf("upstream tls handshake with %s: %w", host.Name, err)
			}
			return uc, nil
		},
		// Pass the guest's Accept-Encoding through untouched.
		DisableCompression: true,
		// HTTP/1.1 only, both ways.
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		Proxy:               nil, // never an environment proxy: the gateway's dial decides
	}
	defer tr.CloseIdleConnections()

	h := &handler{b: b, vm: vm, host: host, authority: authority, tr: tr, rec: rec}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = authority
			pr.Out.Host = authority
		},
		Transport:     tr,
		FlushInterval: -1, // SSE: every event reaches the guest at once
		ErrorLog:      slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			b.log.Warn("broker upstream failed", "vm", vm.Name, "host", host.Name, "err", err)
			http.Error(w, "banger egress: upstream "+host.Name+" failed", http.StatusBadGateway)
		},
	}
	l := newOneConnListener(tc)
	connDone := make(chan struct{})
	var doneOnce sync.Once
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				doneOnce.Do(func() { close(connDone) })
				l.Close()
			}
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err = srv.Serve(l)
	if l.taken.Load() {
		// Serve also returns on srv.Close (ctx done) while the handler
		// may still be writing rec: end the connection and wait for it.
		// The raw conn: a TLS close_notify could block on a peer that
		// does not read.
		guest.Close()
		select {
		case <-connDone:
		case <-time.After(refreshTimeout + 5*time.Second):
			b.log.Warn("broker: a guest connection did not end in time", "vm", vm.Name, "host", host.Name)
		}
	}
	rec.BytesUp += up.Load()
	rec.BytesDown += down.Load()
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve %s: %w", host.Name, err)
	}
	return nil
}

type countConn struct {
	net.Conn
	read, written *atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// oneConnListener hands http.Server one connection, then blocks until
// closed (when that connection ends).
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	taken  atomic.Bool
	closed chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, closed: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.taken.CompareAndSwap(false, true) {
		return l.conn, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
