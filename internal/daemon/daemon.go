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
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	// Drivers replaces the VMM drivers by store.VM.VMM name; nil means
	// the real ones. Tests put a fake here (vmm/vmmfake).
	Drivers map[string]vmm.Driver
}

// Daemon is one banger instance.
type Daemon struct {
	// lock is the state directory's flock, held for the daemon's life.
	lock   *os.File
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
	vmLocks  map[string]*vmLock
	creating map[string]bool
	agents   map[string]*agentclient.Client

	// consoles are the running console-log pumps (console.go).
	consoles consoleSet

	// statfs reports free space (system.FreeBytes; tests inject one).
	statfs system.Statfs

	// building admits one image build at a time (imageengine.go).
	building buildGate
	// verifyHook replaces the verification boot in tests.
	verifyHook verifyBootFunc

	// sessions remembers guest sessions and publishes their changes on
	// bus, the event bus of GET /v1/events (events.go).
	sessions sessionTracker
	bus      eventBus

	// net runs tap mode: bridge, TAPs and NAT of this instance. netMu
	// serialises its changes, since each rewrites the NAT table. The
	// network engine (net.go) works on both.
	net   *network.Manager
	netMu sync.Mutex

	// stats keeps the last CPU sample per VMM process (stats.go).
	stats       statsSampler
	vmWatchOnce sync.Once
	// act is when each VM was last used, for idle park (idlepark.go).
	act activity

	// egress runs the gateway of VMs in egress mode allow
	// (egressengine.go).
	egress *egressEngine
	// broker is the credential broker (broker.go); nil when its CA
	// could not be loaded, and then mode broker gives VMs nothing.
	broker *credentialBroker
}

// New opens the state, re-adopts VMs and returns a daemon ready to Serve.
func New(ctx context.Context, opts Options) (*Daemon, error) {
	if err := paths.EnsureDirs(opts.Layout); err != nil {
		return nil, fmt.Errorf("create state dirs: %w", err)
	}
	// One daemon per state directory, before anything is read: a second
	// one would reconcile too and take the first one's VMs for orphans.
	lock, err := lockDataDir(opts.Layout.DataDir)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, opts.Layout.DBPath)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open state: %w", err)
	}
	d := &Daemon{
		lock:      lock,
		layout:    opts.Layout,
		cfg:       opts.Config,
		log:       opts.Logger,
		store:     st,
		drivers:   newDrivers(opts.Config),
		runner:    opts.Runner,
		agentPath: opts.AgentPath,
		vmLocks:   map[string]*vmLock{},
		creating:  map[string]bool{},
		agents:    map[string]*agentclient.Client{},
	}
	if opts.Drivers != nil {
		d.drivers = opts.Drivers
	}
	d.sessions.bus = &d.bus
	if d.runner == nil {
		d.runner = system.Exec{}
	}
	if opts.NetHost == nil {
		opts.NetHost = network.Kernel{}
	}
	ok := false
	defer func() {
		if !ok {
			st.Close()
			lock.Close()
		}
	}()
	if d.net, err = d.newNetwork(opts.NetHost); err != nil {
		return nil, err
	}
	d.ops = newOps(opsDeps{store: st, log: d.log.With("component", "ops"), base: ctx, bus: d.bus.publish})
	if d.egress, err = d.newEgressEngine(ctx); err != nil {
		return nil, err
	}
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
	d.startVMMUsers(ctx)
	// A host without tap support (no root) still runs user-mode VMs; with
	// no tap VM recorded, failing to even look (no CAP_NET_ADMIN for
	// nftables) is expected and not worth a warning at every start.
	if err := d.netEngine().reconcileNetwork(ctx); err != nil {
		if ls, lerr := st.ListLeases(ctx); lerr == nil && len(ls) == 0 {
			d.log.Debug("reconcile tap network", "err", err)
		} else {
			d.log.Warn("reconcile tap network", "err", err)
		}
	}
	ok = true
	return d, nil
}

// fileDaemonLock is the lock file in the data directory; it holds the
// owner's pid for the message a second daemon prints.
const fileDaemonLock = "daemon.lock"

// lockDataDir takes the state directory's exclusive lock, for as long as
// the returned file stays open (the kernel drops it when the daemon dies,
// however it dies). The file is close-on-exec, so no VMM inherits it.
func lockDataDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, fileDaemonLock)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open daemon lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			data, _ := os.ReadFile(p)
			pid := strings.TrimSpace(string(data))
			if pid == "" {
				pid = "?"
			}
			return nil, fmt.Errorf("another banger daemon (pid %s) owns %s: stop it first, or give this one its own %s", pid, dir, paths.EnvHome)
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
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
	gctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	d.netEngine().syncLocalGuard(gctx)
	d.netEngine().closeNetwork(gctx)
	cancel()
	err := d.store.Close()
	// The lock goes last: the next daemon may open the state at once.
	d.lock.Close()
	return err
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
	if err := removeStaleSocket(sock, os.Geteuid()); err != nil {
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
	// Listen unlinks nothing at close: the socket is removed below only
	// while it is still the one this daemon made.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("chmod socket: %w", err)
	}
	mine, err := os.Lstat(sock)
	if err != nil {
		ln.Close()
		return fmt.Errorf("stat socket: %w", err)
	}
	if after := d.cfg.VM.IdlePark.Duration; after > 0 {
		go d.idleParkLoop(d.ops.base, after)
	}
	srv := d.httpServer(d.routes())
	d.log.Info("daemon listening", "socket", sock, "pid", os.Getpid())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(d.limitConns(&peerListener{Listener: ln, uid: os.Getuid(), log: d.log})) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		if now, err := os.Lstat(sock); err == nil && os.SameFile(mine, now) {
			os.Remove(sock)
		}
		return nil
	case err := <-errc:
		return err
	}
}

// removeStaleSocket clears the way for the daemon's socket. It removes
// only a dead socket of uid's own (the previous daemon's, left by a
// crash); a live one, a socket of another user, or anything that is not
// a socket is refused and left where it is.
func removeStaleSocket(sock string, uid int) error {
	fi, err := os.Lstat(sock)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket (%s): banger does not remove it; move it away and start again", sock, fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid {
		owner := -1
		if ok {
			owner = int(st.Uid)
		}
		return fmt.Errorf("socket %s belongs to uid %d, not to this daemon's uid %d: banger does not remove it; check who made it, remove it and start again", sock, owner, uid)
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

// vmLock is a per-VM mutex with the count of its holders and waiters,
// so the entry goes when the last one leaves and the map does not grow
// with every VM name ever seen.
type vmLock struct {
	mu   sync.Mutex
	refs int
}

// lockVM serialises lifecycle changes of one VM (keyed by name).
func (d *Daemon) lockVM(name string) func() {
	d.mu.Lock()
	l, ok := d.vmLocks[name]
	if !ok {
		l = &vmLock{}
		d.vmLocks[name] = l
	}
	l.refs++
	d.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		d.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(d.vmLocks, name)
		}
		d.mu.Unlock()
	}
}
