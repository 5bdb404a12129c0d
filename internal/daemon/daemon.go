// Package daemon is banger's host daemon: the only owner of VMM control
// sockets and guest agent channels. It serves the HTTP/JSON API on a Unix
// socket, runs long work as operations, and re-adopts running VMs after a
// restart.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// Options configure a daemon.
type Options struct {
	Layout paths.Layout
	Config config.Config
	Logger *slog.Logger
	// AgentPath is the banger-agent binary delivered to each VM.
	AgentPath string
	Runner    system.Runner
	// NetHost carries out tap networking; nil means the kernel.
	NetHost network.Host
}

// Daemon is one banger instance.
type Daemon struct {
	layout paths.Layout
	cfg    config.Config
	log    *slog.Logger
	store  *store.Store
	// drivers are the VMMs this daemon can run, by name (store.VM.VMM).
	drivers   map[string]vmm.Driver
	runner    system.Runner
	agentPath string
	ops       *operations
	accel     accelChoice
	probeMu   sync.Mutex

	// vmLocks serialise lifecycle changes per VM (create, start, stop,
	// delete); names reserved by a running create live here too.
	mu       sync.Mutex
	vmLocks  map[string]*sync.Mutex
	creating map[string]bool
	agents   map[string]*agentclient.Client
	building bool

	// verifyHook replaces the verification boot in tests.
	verifyHook verifyBootFunc

	// sessions remembers guest sessions and publishes their changes.
	sessions sessionTracker

	// net runs tap mode: bridge, TAPs and NAT of this instance. netMu
	// serialises its changes, since each rewrites the NAT table.
	net   *network.Manager
	netMu sync.Mutex

	// stats keeps the last CPU sample per VMM process (stats.go).
	stats       statsSampler
	vmWatchOnce sync.Once
}

// New opens the state, re-adopts VMs and returns a daemon ready to Serve.
func New(ctx context.Context, opts Options) (*Daemon, error) {
	if err := paths.EnsureDirs(opts.Layout); err != nil {
		return nil, fmt.Errorf("create state dirs: %w", err)
	}
	st, err := store.Open(ctx, opts.Layout.DBPath)
	if err != nil {
		return nil, fmt.Errorf("open state: %w", err)
	}
	d := &Daemon{
		layout:    opts.Layout,
		cfg:       opts.Config,
		log:       opts.Logger,
		store:     st,
		drivers:   newDrivers(opts.Config),
		runner:    opts.Runner,
		agentPath: opts.AgentPath,
		vmLocks:   map[string]*sync.Mutex{},
		creating:  map[string]bool{},
		agents:    map[string]*agentclient.Client{},
	}
	if d.runner == nil {
		d.runner = system.Exec{}
	}
	if opts.NetHost == nil {
		opts.NetHost = network.Kernel{}
	}
	if d.net, err = d.newNetwork(opts.NetHost); err != nil {
		return nil, err
	}
	d.ops = newOperations(ctx, st, d.log.With("component", "ops"))
	d.ops.bus = d.sessions.publish
	if _, err := st.FailDanglingOperations(ctx); err != nil {
		return nil, fmt.Errorf("close operations of a previous daemon: %w", err)
	}
	// Operation records are for watching and debugging, not an archive.
	if n, err := st.PruneOperations(ctx, time.Now().Add(-30*24*time.Hour)); err == nil && n > 0 {
		d.log.Info("pruned old operations", "count", n)
	}
	d.accel = d.chooseAccel(ctx)
	d.log.Info("accelerator chosen", "accel", d.accel.Accel, "why", d.accel.Note)
	if err := d.reconcile(ctx); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	// A host without tap support (no root) still runs user-mode VMs; with
	// no tap VM recorded, failing to even look (no CAP_NET_ADMIN for
	// nftables) is expected and not worth a warning at every start.
	if err := d.reconcileNetwork(ctx); err != nil {
		if ls, lerr := st.ListLeases(ctx); lerr == nil && len(ls) == 0 {
			d.log.Debug("reconcile tap network", "err", err)
		} else {
			d.log.Warn("reconcile tap network", "err", err)
		}
	}
	return d, nil
}

// Close releases the daemon's state. Running VMs keep running. Operations
// in flight were cancelled with the daemon's context; give them a moment to
// unwind and record their outcome before the store closes.
func (d *Daemon) Close() error {
	done := make(chan struct{})
	go func() { d.ops.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		d.log.Warn("operations still running at shutdown; the next daemon marks them failed")
	}
	d.mu.Lock()
	for _, a := range d.agents {
		a.Close()
	}
	d.agents = map[string]*agentclient.Client{}
	d.mu.Unlock()
	d.closeNetwork(context.Background())
	return d.store.Close()
}

// Serve listens on the instance's socket until ctx ends.
func (d *Daemon) Serve(ctx context.Context) error {
	sock := d.layout.Socket
	if err := paths.CheckSocketPath(sock); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	if err := removeStaleSocket(sock); err != nil {
		return err
	}
	// The umask makes the socket 0600 from birth: there is no window in
	// which another user could connect.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", sock)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("chmod socket: %w", err)
	}
	srv := &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	d.log.Info("daemon listening", "socket", sock, "pid", os.Getpid())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(&peerListener{Listener: ln, uid: os.Getuid(), log: d.log}) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		os.Remove(sock)
		return nil
	case err := <-errc:
		return err
	}
}

// removeStaleSocket refuses to steal a live daemon's socket but cleans up
// after a dead one.
func removeStaleSocket(sock string) error {
	if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another banger daemon is already listening on %s", sock)
	}
	return os.Remove(sock)
}

// peerListener drops connections whose peer is not the daemon's own user,
// before any byte of HTTP is read. The socket mode already says 0600;
// this is the second lock (root can connect to anything).
type peerListener struct {
	net.Listener
	uid int
	log *slog.Logger
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err != nil || uid != l.uid {
			l.log.Warn("refused connection from another user", "peer_uid", uid, "err", err)
			c.Close()
			continue
		}
		return c, nil
	}
}

func peerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// lockVM serialises lifecycle changes of one VM (keyed by name).
func (d *Daemon) lockVM(name string) func() {
	d.mu.Lock()
	l, ok := d.vmLocks[name]
	if !ok {
		l = &sync.Mutex{}
		d.vmLocks[name] = l
	}
	d.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// driverFor returns the driver that runs vm. VMs recorded before the VMM
// was stored are QEMU's.
func (d *Daemon) driverFor(vm store.VM) vmm.Driver {
	if drv, ok := d.drivers[vm.VMM]; ok {
		return drv
	}
	return d.drivers["qemu"]
}
