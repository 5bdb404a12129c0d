package daemon

// Guest sessions, host side. The guest is the source of truth (see
// internal/session): every route here is forwarded to the VM's agent.
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
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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

func (d *Daemon) registerSessionRoutes(m *http.ServeMux, v string) {
	p := v + "/vms/{name}/sessions"
	m.HandleFunc("POST "+p, d.handleStartSession)
	m.HandleFunc("GET "+p, d.handleListSessions)
	m.HandleFunc("GET "+p+"/{ref}", d.handleGetSession)
	m.HandleFunc("DELETE "+p+"/{ref}", d.handleRemoveSession)
	m.HandleFunc("POST "+p+"/{ref}/attach", d.handleAttachSession)
	m.HandleFunc("POST "+p+"/{ref}/signal", d.handleSignalSession)
	m.HandleFunc("POST "+p+"/{ref}/stop", d.handleStopSession)
	m.HandleFunc("GET "+p+"/{ref}/logs", d.handleSessionLogs)
	m.HandleFunc("GET "+v+"/events", d.handleEvents)
}

// sessionTracker is the daemon's memory of sessions and the event bus.
type sessionTracker struct {
	mu       sync.Mutex
	vms      map[string]*vmSessions // by VM id
	watchers map[chan api.BusEvent]string
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
	t.fanout(api.BusEvent{Time: time.Now().UTC(), Kind: api.EventSession, VM: vs.name, Session: &s})
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

func (t *sessionTracker) watch(vm string) (chan api.BusEvent, func()) {
	ch := make(chan api.BusEvent, 256)
	t.mu.Lock()
	if t.watchers == nil {
		t.watchers = map[chan api.BusEvent]string{}
	}
	t.watchers[ch] = vm
	t.mu.Unlock()
	return ch, func() {
		t.mu.Lock()
		delete(t.watchers, ch)
		t.mu.Unlock()
	}
}

func (t *sessionTracker) watched() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.watchers) > 0
}

// startSessionPoller starts the poll loop once per daemon; it ends with
// the daemon's base context.
func (d *Daemon) startSessionPoller() {
	d.sessions.pollOnce.Do(func() {
		go d.pollSessions(d.ops.base)
	})
}

func (d *Daemon) pollSessions(ctx context.Context) {
	tick := time.NewTicker(sessionPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		live := d.sessions.live()
		watched := d.sessions.watched()
		if len(live) == 0 && !watched {
			continue
		}
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			continue
		}
		for _, vm := range vms {
			if !live[vm.ID] && !(watched && vm.State == api.VMRunning) {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := d.refreshSessions(pctx, vm); err != nil {
				d.log.Debug("poll sessions", "vm", vm.Name, "err", err)
			}
			cancel()
		}
	}
}

// refreshSessions asks the guest for its sessions and returns what the
// daemon knows afterwards (the guest's list plus lost ones). A VM that is
// not running has only lost sessions.
func (d *Daemon) refreshSessions(ctx context.Context, vm store.VM) ([]api.Session, error) {
	if vm.State != api.VMRunning {
		d.sessions.markLost(vm, fmt.Sprintf("VM %s is %s", vm.Name, vm.State))
		return d.sessions.remembered(vm), nil
	}
	c, err := d.agent(ctx, vm)
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
	d.sessions.observe(vm, h.BootID, ss, true)
	return d.sessions.remembered(vm), nil
}

// sessionAgent resolves the VM of a session route and its agent.
func (d *Daemon) sessionAgent(ctx context.Context, r *http.Request) (store.VM, *agentclient.Client, error) {
	d.startSessionPoller()
	vm, err := d.getVM(ctx, r.PathValue("name"))
	if err != nil {
		return vm, nil, err
	}
	if ref := r.PathValue("ref"); ref != "" && !sessionRefPattern.MatchString(ref) {
		return vm, nil, api.Errorf(api.CodeInvalid, "pass a session name or id from `banger vm session list "+vm.Name+"`", "invalid session name %q", ref)
	}
	c, err := d.agent(ctx, vm)
	return vm, c, err
}

func (d *Daemon) handleStartSession(w http.ResponseWriter, r *http.Request) {
	var req api.StartSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		writeError(w, api.Errorf(api.CodeInvalid, "give the command after --", "empty command"))
		return
	}
	// A start finishes even if the client leaves: a half-launched session
	// is the guest's to resolve, but its outcome should be recorded here.
	ctx := context.WithoutCancel(r.Context())
	vm, c, err := d.sessionAgent(ctx, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.Cwd == "" {
		req.Cwd = sessionFallbackCwd
		if guestIsDir(ctx, c, defaultSessionCwd) {
			req.Cwd = defaultSessionCwd
		}
	}
	s, err := c.StartSession(ctx, req)
	if err != nil {
		writeError(w, asAPIError(err))
		return
	}
	d.sessions.observe(vm, s.BootID, []api.Session{s}, false)
	d.log.Info("session started", "vm", vm.Name, "session", s.ID, "name", s.Name, "state", s.State)
	writeJSON(w, http.StatusCreated, s)
}

// guestIsDir runs `test -d dir` in the guest.
func guestIsDir(ctx context.Context, c *agentclient.Client, dir string) bool {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := guestExec(ctx, c, api.ExecRequest{Argv: []string{"test", "-d", dir}}, nil, nil)
	return err == nil && st.Code == 0
}

func (d *Daemon) handleListSessions(w http.ResponseWriter, r *http.Request) {
	d.startSessionPoller()
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	ss, err := d.refreshSessions(r.Context(), vm)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ss)
}

func (d *Daemon) handleGetSession(w http.ResponseWriter, r *http.Request) {
	d.startSessionPoller()
	ref := r.PathValue("ref")
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	if vm.State != api.VMRunning {
		if _, err := d.refreshSessions(r.Context(), vm); err == nil {
			if s, ok := d.sessions.find(vm, ref); ok {
				writeJSON(w, http.StatusOK, s)
				return
			}
		}
		writeError(w, api.Errorf(api.CodeConflict, fmt.Sprintf("start it with `banger vm start %s`", vm.Name), "VM %q is %s", vm.Name, vm.State))
		return
	}
	_, c, err := d.sessionAgent(r.Context(), r)
	if err != nil {
		writeError(w, err)
		return
	}
	s, err := c.GetSession(r.Context(), ref)
	if err != nil {
		var se *agentclient.StatusError
		if errors.As(err, &se) && se.StatusCode == http.StatusNotFound {
			// The guest forgot it (it rebooted): what the daemon saw last.
			if _, rerr := d.refreshSessions(r.Context(), vm); rerr == nil {
				if s, ok := d.sessions.find(vm, ref); ok {
					writeJSON(w, http.StatusOK, s)
					return
				}
			}
		}
		writeError(w, asAPIError(err))
		return
	}
	d.sessions.observe(vm, "", []api.Session{s}, false)
	writeJSON(w, http.StatusOK, s)
}

func (d *Daemon) handleRemoveSession(w http.ResponseWriter, r *http.Request) {
	vm, c, err := d.sessionAgent(r.Context(), r)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := c.RemoveSession(r.Context(), r.PathValue("ref")); err != nil {
		writeError(w, asAPIError(err))
		return
	}
	_, _ = d.refreshSessions(r.Context(), vm)
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) handleSignalSession(w http.ResponseWriter, r *http.Request) {
	var req api.SignalSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Signal < 1 || req.Signal > mux.MaxSignal {
		writeError(w, api.Errorf(api.CodeInvalid, "use a name such as TERM, INT, HUP, KILL or a number 1-64", "invalid signal %d", req.Signal))
		return
	}
	vm, c, err := d.sessionAgent(r.Context(), r)
	if err != nil {
		writeError(w, err)
		return
	}
	s, err := c.SignalSession(r.Context(), r.PathValue("ref"), req.Signal)
	if err != nil {
		writeError(w, asAPIError(err))
		return
	}
	d.sessions.observe(vm, "", []api.Session{s}, false)
	writeJSON(w, http.StatusOK, s)
}

func (d *Daemon) handleStopSession(w http.ResponseWriter, r *http.Request) {
	var req api.StopSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > 24*3600 {
		writeError(w, api.Errorf(api.CodeInvalid, "use a duration between 0s and 24h", "stop timeout %gs out of range", req.TimeoutSeconds))
		return
	}
	// The stop finishes even if the client leaves; it is bounded by the
	// KILL timeout plus a margin.
	timeout := time.Duration(req.TimeoutSeconds * float64(time.Second))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), timeout+40*time.Second)
	defer cancel()
	vm, c, err := d.sessionAgent(ctx, r)
	if err != nil {
		writeError(w, err)
		return
	}
	s, err := c.StopSession(ctx, r.PathValue("ref"), timeout)
	if err != nil {
		writeError(w, asAPIError(err))
		return
	}
	d.sessions.observe(vm, "", []api.Session{s}, false)
	writeJSON(w, http.StatusOK, s)
}

// handleAttachSession connects to the session through the agent first
// and answers 101 only once that worked, so refusals (unknown session,
// stdin taken) stay plain HTTP errors with a hint. Then it splices bytes
// like exec. Either side closing detaches; nothing here stops a session.
func (d *Daemon) handleAttachSession(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.MuxProtocol) {
		writeError(w, api.Errorf(api.CodeInvalid, "send Connection: Upgrade and Upgrade: "+api.MuxProtocol, "attach needs a protocol upgrade"))
		return
	}
	var req api.AttachSessionRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Tail < 0 || (req.FromStart && req.Tail > 0) {
		writeError(w, api.Errorf(api.CodeInvalid, "pass --from-start or --tail N, not both", "invalid replay request"))
		return
	}
	_, c, err := d.sessionAgent(r.Context(), r)
	if err != nil {
		writeError(w, err)
		return
	}
	guest, err := c.AttachSession(r.Context(), r.PathValue("ref"), req)
	if err != nil {
		writeError(w, asAPIError(err))
		return
	}
	upgradeAndSplice(w, guest)
}

// handleSessionLogs streams one log of a session. Errors can only be
// reported before the first byte, so the status line waits for it.
func (d *Daemon) handleSessionLogs(w http.ResponseWriter, r *http.Request) {
	req, err := api.ParseSessionLogsRequest(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	_, c, err := d.sessionAgent(r.Context(), r)
	if err != nil {
		writeError(w, err)
		return
	}
	lw := &lazyWriter{w: w, rc: http.NewResponseController(w)}
	err = c.SessionLogs(r.Context(), r.PathValue("ref"), req, lw)
	if err != nil && !lw.started {
		writeError(w, asAPIError(err))
		return
	}
	lw.start()
}

// lazyWriter sends the 200 status with the first byte of output and
// flushes every write (followed logs are live).
type lazyWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func (l *lazyWriter) start() {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/octet-stream")
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	l.start()
	n, err := l.w.Write(p)
	if err == nil {
		err = l.rc.Flush()
	}
	return n, err
}

// handleEvents streams the event bus as NDJSON until the client leaves.
// ?vm=NAME limits it to one VM.
func (d *Daemon) handleEvents(w http.ResponseWriter, r *http.Request) {
	d.startSessionPoller()
	d.startVMWatcher()
	filter := r.URL.Query().Get("vm")
	if filter != "" {
		if _, err := d.getVM(r.Context(), filter); err != nil {
			writeError(w, err)
			return
		}
	}
	ch, cancel := d.sessions.watch(filter)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ch:
			if enc.Encode(ev) != nil || rc.Flush() != nil {
				return
			}
		}
	}
}
