package daemon

// Guest sessions, host side. The guest is the source of truth (see
// internal/session): every call of the session engine is forwarded to
// the VM's agent (the HTTP routes are internal/daemon/httpapi's).
// The daemon adds three things the guest cannot know:
//
//   - a memory of the last metadata it saw per session, so that sessions
//     of a guest that rebooted (its /run is empty) or of a stopped VM are
//     still listed, as lost;
//   - the default working directory: /root/repo when the guest has one
//     (a prepared workspace), else /root;
//   - an event bus, GET /v1/events: NDJSON api.BusEvent lines whenever a
//     session appears or changes state. Changes come from the daemon's
//     own calls (start, stop, signal, list, show) and from polling the
//     agents every sessionPollInterval, but only while someone watches
//     the bus or a session the daemon knows of is still live: an idle
//     daemon leaves the guests alone.
//
// The memory is not persisted: a restarted daemon learns the sessions
// again from the guests (which is what matters after a daemon restart);
// only a session that was lost while no daemon ran has no record.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/store"
)

// maxEndedSessions is how many ended (exited or lost) sessions the
// daemon remembers per VM; older ones are forgotten first. A guest that
// keeps starting sessions and rebooting cannot grow the daemon's memory.
const maxEndedSessions = 100

// sessionPollInterval is how often live sessions are polled for state
// changes (see the comment at the top of this file).
const sessionPollInterval = 3 * time.Second

// defaultSessionCwd is where sessions run when the request names no
// directory and the guest has it; sessionFallbackCwd otherwise.
const (
	defaultSessionCwd  = "/root/repo"
	sessionFallbackCwd = "/root"
)

var sessionRefPattern = regexp.MustCompile(api.SessionNamePattern)

// sessionTracker is the daemon's memory of sessions. Changes it sees go
// to bus (nil: nowhere), published under mu so they keep their order.
type sessionTracker struct {
	mu       sync.Mutex
	vms      map[string]*vmSessions // by VM id
	bus      *eventBus
	pollOnce sync.Once
}

// vmSessions is what the daemon last saw of one VM's sessions.
type vmSessions struct {
	name   string
	bootID string
	byID   map[string]api.Session
}

func (t *sessionTracker) vm(vm store.VM) *vmSessions {
	if t.vms == nil {
		t.vms = map[string]*vmSessions{}
	}
	vs := t.vms[vm.ID]
	if vs == nil {
		vs = &vmSessions{byID: map[string]api.Session{}}
		t.vms[vm.ID] = vs
	}
	vs.name = vm.Name
	return vs
}

// observe records sessions the guest reported. With complete (a full
// list), remembered sessions missing from it are resolved: from another
// boot they are lost, from this boot they were removed.
func (t *sessionTracker) observe(vm store.VM, bootID string, ss []api.Session, complete bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	vs := t.vm(vm)
	if bootID != "" {
		vs.bootID = bootID
	}
	seen := map[string]bool{}
	for _, s := range ss {
		seen[s.ID] = true
		t.put(vs, s)
	}
	defer t.prune(vs)
	if !complete {
		return
	}
	for id, s := range vs.byID {
		if seen[id] {
			continue
		}
		if s.BootID != "" && vs.bootID != "" && s.BootID != vs.bootID {
			if !s.Final() {
				t.put(vs, lostSession(s, "the guest rebooted: the session's processes and logs are gone"))
			}
			continue
		}
		delete(vs.byID, id)
	}
}

// forget drops everything remembered about a VM (it was deleted).
func (t *sessionTracker) forget(vmID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.vms, vmID)
}

// prune keeps the newest maxEndedSessions ended sessions of vs.
// Callers hold t.mu.
func (t *sessionTracker) prune(vs *vmSessions) {
	var ended []api.Session
	for _, s := range vs.byID {
		if s.Final() {
			ended = append(ended, s)
		}
	}
	if len(ended) <= maxEndedSessions {
		return
	}
	slices.SortFunc(ended, func(a, b api.Session) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	for _, s := range ended[:len(ended)-maxEndedSessions] {
		delete(vs.byID, s.ID)
	}
}

// forgetVM drops the per-VM state the daemon keeps in memory (agent
// session, session records) once a VM is gone; the lock map shrinks by
// itself (lockVM) and stats samples age out (statsSampler).
func (d *Daemon) forgetVM(vmID string) {
	d.egress.unsupervise(vmID)
	d.dropAgent(vmID)
	d.sessions.forget(vmID)
}

// markLost marks every live session of a VM lost (the VM stopped).
func (t *sessionTracker) markLost(vm store.VM, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	vs := t.vm(vm)
	for _, s := range vs.byID {
		if !s.Final() {
			t.put(vs, lostSession(s, why))
		}
	}
	t.prune(vs)
}

func lostSession(s api.Session, why string) api.Session {
	now := time.Now().UTC()
	s.State, s.Error, s.EndedAt = api.SessionLost, why, &now
	return s
}

// put stores s and publishes it when it is new or its state changed.
// Callers hold t.mu.
func (t *sessionTracker) put(vs *vmSessions, s api.Session) {
	old, ok := vs.byID[s.ID]
	vs.byID[s.ID] = s
	if ok && old.State == s.State && old.PID == s.PID {
		return
	}
	t.bus.publish(api.BusEvent{Time: time.Now().UTC(), Kind: api.EventSession, VM: vs.name, Session: &s})
}

// remembered returns the sessions the daemon knows for vm, oldest first.
func (t *sessionTracker) remembered(vm store.VM) []api.Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	vs := t.vm(vm)
	out := make([]api.Session, 0, len(vs.byID))
	for _, s := range vs.byID {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b api.Session) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// find returns a remembered session by id, else by name (the newest).
func (t *sessionTracker) find(vm store.VM, ref string) (api.Session, bool) {
	ss := t.remembered(vm)
	for _, s := range ss {
		if s.ID == ref {
			return s, true
		}
	}
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].Name == ref {
			return ss[i], true
		}
	}
	return api.Session{}, false
}

// live reports the VMs with a session the daemon believes is running.
func (t *sessionTracker) live() map[string]bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]bool{}
	for id, vs := range t.vms {
		for _, s := range vs.byID {
			if !s.Final() {
				out[id] = true
				break
			}
		}
	}
	return out
}

// sessionDeps is what the session engine needs from the rest of the
// daemon.
type sessionDeps struct {
	// tracker is the daemon's memory of sessions.
	tracker *sessionTracker
	// bus is the event bus Subscribe watches.
	bus *eventBus
	log *slog.Logger
	// base ends with the daemon; the poller runs under it.
	base  context.Context
	getVM func(ctx context.Context, name string) (store.VM, error)
	// hold counts a stream as a use of its VM until it closes.
	hold    func(vmID string, c net.Conn) net.Conn
	listVMs func(ctx context.Context) ([]store.VM, error)
	agent   func(ctx context.Context, vm store.VM) (*agentclient.Client, error)
	// watchVMs starts the VM table watcher (events.go) for the bus.
	watchVMs func()
}

// sessionEngine serves guest sessions and the event bus: it forwards to
// the VM's agent and keeps what the daemon adds (see the top of this
// file). It implements the HTTP layer's Sessions and Events.
type sessionEngine struct {
	sessionDeps
}

func newSessionEngine(deps sessionDeps) *sessionEngine {
	return &sessionEngine{sessionDeps: deps}
}

// sessionEngine builds the daemon's session engine over its tracker.
func (d *Daemon) sessionEngine() *sessionEngine {
	base := context.Background()
	if d.ops != nil {
		base = d.ops.base
	}
	return newSessionEngine(sessionDeps{
		tracker:  &d.sessions,
		bus:      &d.bus,
		log:      d.log,
		base:     base,
		getVM:    d.useVM,
		hold:     d.act.hold,
		listVMs:  d.store.ListVMs,
		agent:    d.agent,
		watchVMs: d.startVMWatcher,
	})
}

// startPoller starts the poll loop once per daemon (the tracker's once);
// it ends with the daemon's base context.
func (e *sessionEngine) startPoller() {
	e.tracker.pollOnce.Do(func() {
		go e.poll(e.base)
	})
}

func (e *sessionEngine) poll(ctx context.Context) {
	tick := time.NewTicker(sessionPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		live := e.tracker.live()
		watched := e.bus.watched()
		if len(live) == 0 && !watched {
			continue
		}
		vms, err := e.listVMs(ctx)
		if err != nil {
			continue
		}
		for _, vm := range vms {
			if !live[vm.ID] && !(watched && vm.State == api.VMRunning) {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := e.refresh(pctx, vm); err != nil {
				e.log.Debug("poll sessions", "vm", vm.Name, "err", err)
			}
			cancel()
		}
	}
}

// refresh asks the guest for its sessions and returns what the daemon
// knows afterwards (the guest's list plus lost ones). A VM that is not
// running has only lost sessions.
func (e *sessionEngine) refresh(ctx context.Context, vm store.VM) ([]api.Session, error) {
	if vm.State != api.VMRunning {
		e.tracker.markLost(vm, fmt.Sprintf("VM %s is %s", vm.Name, vm.State))
		return e.tracker.remembered(vm), nil
	}
	c, err := e.agent(ctx, vm)
	if err != nil {
		return nil, err
	}
	h, err := c.Health(ctx)
	if err != nil {
		return nil, asAPIError(err)
	}
	ss, err := c.ListSessions(ctx)
	if err != nil {
		return nil, asAPIError(err)
	}
	e.tracker.observe(vm, h.BootID, ss, true)
	return e.tracker.remembered(vm), nil
}

// sessionAgent resolves the VM of a session call and its agent; ref, when
// set, must look like a session name or id.
func (e *sessionEngine) sessionAgent(ctx context.Context, name, ref string) (store.VM, *agentclient.Client, error) {
	e.startPoller()
	vm, err := e.getVM(ctx, name)
	if err != nil {
		return vm, nil, err
	}
	if ref != "" && !sessionRefPattern.MatchString(ref) {
		return vm, nil, api.Errorf(api.CodeInvalid, "pass a session name or id from `banger vm session list "+vm.Name+"`", "invalid session name %q", ref)
	}
	c, err := e.agent(ctx, vm)
	return vm, c, err
}

// StartSession starts req in the guest, in /root/repo when the request
// names no directory and the guest has one.
func (e *sessionEngine) StartSession(ctx context.Context, name string, req api.StartSessionRequest) (api.Session, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return api.Session{}, api.Errorf(api.CodeInvalid, "give the command after --", "empty command")
	}
	vm, c, err := e.sessionAgent(ctx, name, "")
	if err != nil {
		return api.Session{}, err
	}
	if req.Cwd == "" {
		req.Cwd = sessionFallbackCwd
		if guestIsDir(ctx, c, defaultSessionCwd) {
			req.Cwd = defaultSessionCwd
		}
	}
	s, err := c.StartSession(ctx, req)
	if err != nil {
		return api.Session{}, asAPIError(err)
	}
	e.tracker.observe(vm, s.BootID, []api.Session{s}, false)
	e.log.Info("session started", "vm", vm.Name, "session", s.ID, "name", s.Name, "state", s.State)
	return s, nil
}

// guestIsDir runs `test -d dir` in the guest.
func guestIsDir(ctx context.Context, c *agentclient.Client, dir string) bool {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := guestExec(ctx, c, api.ExecRequest{Argv: []string{"test", "-d", dir}}, nil, nil)
	return err == nil && st.Code == 0
}

// ListSessions lists a VM's sessions, lost ones included.
func (e *sessionEngine) ListSessions(ctx context.Context, name string) ([]api.Session, error) {
	e.startPoller()
	vm, err := e.getVM(ctx, name)
	if err != nil {
		return nil, err
	}
	return e.refresh(ctx, vm)
}

// GetSession asks the guest; a session the guest forgot (it rebooted,
// or the VM is stopped) is what the daemon saw last.
func (e *sessionEngine) GetSession(ctx context.Context, name, ref string) (api.Session, error) {
	e.startPoller()
	vm, err := e.getVM(ctx, name)
	if err != nil {
		return api.Session{}, err
	}
	if vm.State != api.VMRunning {
		if _, err := e.refresh(ctx, vm); err == nil {
			if s, ok := e.tracker.find(vm, ref); ok {
				return s, nil
			}
		}
		return api.Session{}, api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name), "VM %q is %s", vm.Name, vm.State)
	}
	_, c, err := e.sessionAgent(ctx, name, ref)
	if err != nil {
		return api.Session{}, err
	}
	s, err := c.GetSession(ctx, ref)
	if err != nil {
		if errors.Is(err, api.ErrNotFound) {
			if _, rerr := e.refresh(ctx, vm); rerr == nil {
				if s, ok := e.tracker.find(vm, ref); ok {
					return s, nil
				}
			}
		}
		return api.Session{}, asAPIError(err)
	}
	e.tracker.observe(vm, "", []api.Session{s}, false)
	return s, nil
}

// RemoveSession removes an ended session from the guest.
func (e *sessionEngine) RemoveSession(ctx context.Context, name, ref string) error {
	vm, c, err := e.sessionAgent(ctx, name, ref)
	if err != nil {
		return err
	}
	if err := c.RemoveSession(ctx, ref); err != nil {
		return asAPIError(err)
	}
	_, _ = e.refresh(ctx, vm)
	return nil
}

// SignalSession sends a signal to a session's process group.
func (e *sessionEngine) SignalSession(ctx context.Context, name, ref string, req api.SignalSessionRequest) (api.Session, error) {
	if req.Signal < 1 || req.Signal > mux.MaxSignal {
		return api.Session{}, api.Errorf(api.CodeInvalid, "use a name such as TERM, INT, HUP, KILL or a number 1-64", "invalid signal %d", req.Signal)
	}
	vm, c, err := e.sessionAgent(ctx, name, ref)
	if err != nil {
		return api.Session{}, err
	}
	s, err := c.SignalSession(ctx, ref, req.Signal)
	if err != nil {
		return api.Session{}, asAPIError(err)
	}
	e.tracker.observe(vm, "", []api.Session{s}, false)
	return s, nil
}

// StopSession stops a session (TERM, then KILL after the timeout); it is
// bounded by that timeout plus a margin.
func (e *sessionEngine) StopSession(ctx context.Context, name, ref string, req api.StopSessionRequest) (api.Session, error) {
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > 24*3600 {
		return api.Session{}, api.Errorf(api.CodeInvalid, "use a duration between 0s and 24h", "stop timeout %gs out of range", req.TimeoutSeconds)
	}
	timeout := time.Duration(req.TimeoutSeconds * float64(time.Second))
	ctx, cancel := context.WithTimeout(ctx, timeout+40*time.Second)
	defer cancel()
	vm, c, err := e.sessionAgent(ctx, name, ref)
	if err != nil {
		return api.Session{}, err
	}
	s, err := c.StopSession(ctx, ref, timeout)
	if err != nil {
		return api.Session{}, asAPIError(err)
	}
	e.tracker.observe(vm, "", []api.Session{s}, false)
	return s, nil
}

// AttachSession connects to a session through the agent and returns the
// upgraded stream.
func (e *sessionEngine) AttachSession(ctx context.Context, name, ref string, req api.AttachSessionRequest) (net.Conn, error) {
	if req.Tail < 0 || (req.FromStart && req.Tail > 0) {
		return nil, api.Errorf(api.CodeInvalid, "pass --from-start or --tail N, not both", "invalid replay request")
	}
	vm, c, err := e.sessionAgent(ctx, name, ref)
	if err != nil {
		return nil, err
	}
	guest, err := c.AttachSession(ctx, ref, req)
	if err != nil {
		return nil, asAPIError(err)
	}
	if e.hold != nil {
		// An attached terminal keeps its VM awake (idle park).
		guest = e.hold(vm.ID, guest)
	}
	return guest, nil
}

// SessionLogs copies one log of a session to w.
func (e *sessionEngine) SessionLogs(ctx context.Context, name, ref string, req api.SessionLogsRequest, w io.Writer) error {
	_, c, err := e.sessionAgent(ctx, name, ref)
	if err != nil {
		return err
	}
	return asAPIError(c.SessionLogs(ctx, ref, req, w))
}

// Subscribe watches the event bus, one VM's events when vm is set.
func (e *sessionEngine) Subscribe(ctx context.Context, vm string) (<-chan api.BusEvent, func(), error) {
	e.startPoller()
	if e.watchVMs != nil {
		e.watchVMs()
	}
	if vm != "" {
		if _, err := e.getVM(ctx, vm); err != nil {
			return nil, nil, err
		}
	}
	ch, cancel := e.bus.watch(vm)
	return ch, cancel, nil
}

// asAPIError unwraps an agent's answer to its *api.Error, so the client
// sees the guest's message and hint rather than the agentclient wrapper.
func asAPIError(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	return err
}
