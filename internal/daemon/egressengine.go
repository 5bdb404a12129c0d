package daemon

// The egress engine: the host side of egress mode allow. It owns the
// gateway (internal/egress), gives it each VM's policy from the store
// (cached, dropped on every change), turns its records into log rows,
// bus events and debug lines, and keeps one supervisor per running
// gateway VM that holds the VM's agent channel up and hands every
// guest-initiated stream to the gateway.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/egress"
	"github.com/bangerdev/banger/internal/store"
)

// Defaults of the egress log API.
const (
	egressLogDefaultLimit = 1000
	// egressPruneEvery: a VM's log is trimmed to log_max_rows every this
	// many inserts (and at its first), so it holds at most that many
	// rows more than the cap.
	egressPruneEvery = 64
)

// egressDeps is what the egress engine needs of the daemon.
type egressDeps struct {
	store *store.Store
	cfg   config.Egress
	bus   *eventBus
	log   *slog.Logger
	// base outlives requests: supervisors and streams run under it.
	base context.Context
	// agent returns a live agent session of VM id, dialing when the
	// cached one died; it fails when the VM is not running.
	agent func(ctx context.Context, vmID string) (*agentclient.Client, error)
	// broker is the credential broker; nil until it is wired.
	broker egress.Interceptor
	// rootCAs verify upstream TLS (system roots + upstream_ca_file).
	rootCAs *x509.CertPool
}

// egressEngine runs the gateway of every VM in egress mode allow.
type egressEngine struct {
	egressDeps
	gw *egress.Gateway

	mu       sync.Mutex
	policies map[string]vmPolicy    // by VM id; dropped on change
	sups     map[string]*supervisor // of each running gateway VM
	inserts  map[string]int         // log rows written per VM since start
	// gen counts policy invalidations: a load that saw the store before
	// one does not cache what it read.
	gen uint64
	// changeMu serialises read-modify-write of a VM's own patterns.
	changeMu sync.Mutex
	// policyLoaded, in tests, runs between a policy's read and its caching.
	policyLoaded func()
}

// supervisor is one VM's stream loop (run); a pointer, so that a loop
// that ends by itself removes its own entry and not a newer one.
type supervisor struct{ cancel context.CancelFunc }

// vmPolicy is a VM's policy as the gateway applies it.
type vmPolicy struct {
	policy  egress.Policy
	label   string
	gateway bool
}

func newEgressEngine(deps egressDeps) *egressEngine {
	e := &egressEngine{
		egressDeps: deps,
		policies:   map[string]vmPolicy{},
		sups:       map[string]*supervisor{},
		inserts:    map[string]int{},
	}
	e.gw = egress.New(egress.Options{
		Resolve:     deps.cfg.Resolve,
		RootCAs:     deps.rootCAs,
		Policy:      e.policyFor,
		Record:      e.record,
		Broker:      deps.broker,
		DialTimeout: 10 * time.Second,
		Logger:      deps.log,
	})
	return e
}

// loadRootCAs is the system's roots plus the PEM certificates of file
// (config egress.upstream_ca_file; "" adds none).
func loadRootCAs(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("egress.upstream_ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("egress.upstream_ca_file %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// netEgress is the egress the VMM and the network see: in mode allow the
// NIC has no route out (as none) and the gateway on the agent channel is
// the only way out. Drivers never see "allow".
func netEgress(vm store.VM) string {
	if vm.Egress == config.EgressAllow {
		return config.EgressNone
	}
	return vm.Egress
}

// usesGateway says whether vm's connections go through the gateway.
func usesGateway(vm store.VM) bool { return vm.Egress == config.EgressAllow }

// policyFor is the gateway's Policy callback.
func (e *egressEngine) policyFor(vmID string) (egress.Policy, string, bool) {
	e.mu.Lock()
	p, ok := e.policies[vmID]
	gen := e.gen
	e.mu.Unlock()
	if ok {
		return p.policy, p.label, p.gateway
	}
	ctx, cancel := context.WithTimeout(e.base, 5*time.Second)
	defer cancel()
	vm, err := e.store.GetVM(ctx, vmID)
	if err != nil {
		// Unknown VM: no gateway, everything denied.
		e.log.Debug("egress policy: vm", "vm_id", vmID, "err", err)
		return egress.Policy{Name: "none"}, "none", false
	}
	p = e.buildPolicy(vm)
	if e.policyLoaded != nil {
		e.policyLoaded()
	}
	e.mu.Lock()
	if e.gen == gen {
		// Else a change (or the VM's end) came after the read: use what
		// was read this once, but let the next connection read again.
		e.policies[vmID] = p
	}
	e.mu.Unlock()
	return p.policy, p.label, p.gateway
}

// buildPolicy is vm's named policy with its own patterns on top. A
// pattern that no longer parses (the config changed under a VM) is
// dropped with a warning: the policy only ever gets narrower for it.
func (e *egressEngine) buildPolicy(vm store.VM) vmPolicy {
	base, known := e.cfg.PolicySet()[vm.EgressPolicy]
	if !known && usesGateway(vm) {
		e.log.Warn("egress policy of VM is not in the config any more; only its own patterns apply", "vm", vm.Name, "policy", vm.EgressPolicy)
	}
	allow := append(slices.Clone(base.Allow), vm.EgressAllow...)
	deny := append(slices.Clone(base.Deny), vm.EgressDeny...)
	pol, err := egress.NewPolicy(vm.EgressPolicy, validPatterns(e.log, vm.Name, allow), validPatterns(e.log, vm.Name, deny))
	if err != nil {
		e.log.Warn("egress policy of VM", "vm", vm.Name, "err", err)
		pol = egress.Policy{Name: vm.EgressPolicy}
	}
	return vmPolicy{policy: pol, label: policyLabel(vm), gateway: usesGateway(vm)}
}

func validPatterns(log *slog.Logger, vm string, pats []string) []string {
	out := make([]string, 0, len(pats))
	for _, p := range pats {
		if _, err := egress.ParseRule(p); err != nil {
			log.Warn("egress pattern dropped", "vm", vm, "pattern", p, "err", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// policyLabel names a VM's policy in records and messages: "agents", or
// "agents+2" with two patterns of the VM's own.
func policyLabel(vm store.VM) string {
	if n := len(vm.EgressAllow) + len(vm.EgressDeny); n > 0 {
		return fmt.Sprintf("%s+%d", vm.EgressPolicy, n)
	}
	return vm.EgressPolicy
}

// invalidate drops VM id's cached policy: the next connection reads the
// store again.
func (e *egressEngine) invalidate(vmID string) {
	e.mu.Lock()
	delete(e.policies, vmID)
	e.gen++
	e.mu.Unlock()
}

// record is the gateway's Record callback: one row, one bus event, one
// debug line. Records carry names and counts, never credentials.
func (e *egressEngine) record(r egress.Record) {
	row := storeRecord(r)
	ctx, cancel := context.WithTimeout(e.base, 5*time.Second)
	defer cancel()
	if err := e.store.InsertEgressRecord(ctx, &row); err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			e.log.Warn("egress log", "vm", r.VM, "err", err)
		}
		return
	}
	e.mu.Lock()
	e.inserts[r.VMID]++
	n := e.inserts[r.VMID]
	e.mu.Unlock()
	if n%egressPruneEvery == 1 {
		if _, err := e.store.PruneEgressLog(ctx, r.VMID, e.cfg.LogMaxRows); err != nil {
			e.log.Warn("prune egress log", "vm", r.VM, "err", err)
		}
	}
	view := recordView(row, r.VM)
	e.bus.publish(api.BusEvent{Time: time.Now().UTC(), Kind: api.EventEgress, VM: r.VM, Egress: &view})
	e.log.Debug("egress", "vm", r.VM, "session", r.Session, "process", r.Process, "proto", r.Proto,
		"name", r.Name, "addr", r.Addr, "port", r.Port, "decision", r.Decision, "rule", r.Rule,
		"policy", r.Policy, "up", r.BytesUp, "down", r.BytesDown, "took", r.Duration)
}

func storeRecord(r egress.Record) store.EgressRecord {
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	return store.EgressRecord{
		VMID: r.VMID, Time: t.UTC(), Session: r.Session, PID: r.PID, Process: r.Process,
		Proto: r.Proto, Name: r.Name, Addr: r.Addr, Port: int(r.Port), Decision: r.Decision,
		Rule: r.Rule, Policy: r.Policy, Note: r.Note, BytesUp: r.BytesUp, BytesDown: r.BytesDown,
		DurationMS: r.Duration.Milliseconds(),
	}
}

func recordView(r store.EgressRecord, vmName string) api.EgressRecord {
	return api.EgressRecord{
		ID: r.ID, Time: r.Time, VMID: r.VMID, VM: vmName, Session: r.Session, PID: r.PID,
		Process: r.Process, Proto: r.Proto, Name: r.Name, Addr: r.Addr, Port: uint16(r.Port),
		Decision: r.Decision, Rule: r.Rule, Policy: r.Policy, Note: r.Note,
		BytesUp: r.BytesUp, BytesDown: r.BytesDown, DurationMS: r.DurationMS,
	}
}

func egressRecord(r store.EgressRecord, vmName string) egress.Record {
	return egress.Record{
		Time: r.Time, VMID: r.VMID, VM: vmName, Session: r.Session, Process: r.Process, PID: r.PID,
		Proto: r.Proto, Name: r.Name, Addr: r.Addr, Port: uint16(r.Port), Decision: r.Decision,
		Rule: r.Rule, Policy: r.Policy, Note: r.Note, BytesUp: r.BytesUp, BytesDown: r.BytesDown,
		Duration: time.Duration(r.DurationMS) * time.Millisecond,
	}
}

// supervise keeps vm's agent channel up and its streams flowing to the
// gateway until unsupervise (VM stopped or deleted). Starting it twice
// is harmless.
func (e *egressEngine) supervise(vm store.VM) {
	if e == nil || !usesGateway(vm) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.sups[vm.ID]; ok {
		return
	}
	ctx, cancel := context.WithCancel(e.base)
	sup := &supervisor{cancel: cancel}
	e.sups[vm.ID] = sup
	go e.run(ctx, sup, egress.VMRef{ID: vm.ID, Name: vm.Name})
}

// unsupervise stops vm's supervisor, ends its streams and forgets the
// gateway's state of it (fake IPs) and its cached policy.
func (e *egressEngine) unsupervise(vmID string) {
	if e == nil {
		return
	}
	e.mu.Lock()
	sup := e.sups[vmID]
	delete(e.sups, vmID)
	delete(e.policies, vmID)
	e.gen++
	delete(e.inserts, vmID)
	e.mu.Unlock()
	if sup != nil {
		sup.cancel()
	}
	e.gw.Forget(vmID)
}

// supervised says whether VM id has a supervisor (tests).
func (e *egressEngine) supervised(vmID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.sups[vmID]
	return ok
}

// run accepts the guest's streams on the VM's agent session, redialing
// (with a capped backoff) whenever the session dies: an agent restart,
// a daemon that lost the channel. A guest that opens no stream costs a
// blocked Accept; each stream is the gateway's to close.
func (e *egressEngine) run(ctx context.Context, sup *supervisor, vm egress.VMRef) {
	log := e.log.With("vm", vm.Name, "component", "egress")
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		c, err := e.agent(ctx, vm.ID)
		if errors.Is(err, errVMGone) {
			// Deleted, or stopped behind the daemon's back (a crash
			// found later): a start supervises it again.
			log.Debug("egress: VM is gone; supervisor ends", "err", err)
			e.mu.Lock()
			if e.sups[vm.ID] == sup {
				delete(e.sups, vm.ID)
			}
			e.mu.Unlock()
			sup.cancel()
			return
		}
		if err != nil {
			log.Debug("egress: agent not reachable; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 250 * time.Millisecond
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				if ctx.Err() == nil {
					log.Debug("egress: agent session ended; redialing", "err", err)
				}
				break
			}
			go e.gw.Handle(ctx, vm, s)
		}
		// A session that died at once must not spin.
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// View is the egress policy of VM name as the gateway applies it.
func (e *egressEngine) View(ctx context.Context, vm store.VM) api.EgressView {
	v := api.EgressView{VM: vm.Name, Mode: vm.Egress, Credentials: vm.Credentials}
	if !usesGateway(vm) {
		return v
	}
	base := e.cfg.PolicySet()[vm.EgressPolicy]
	v.Policy, v.PolicyAllow, v.PolicyDeny = vm.EgressPolicy, base.Allow, base.Deny
	v.Allow, v.Deny = vm.EgressAllow, vm.EgressDeny
	v.EffectiveAllow = append(slices.Clone(base.Allow), vm.EgressAllow...)
	v.EffectiveDeny = append(slices.Clone(base.Deny), vm.EgressDeny...)
	return v
}

// Change adds and removes the VM's own patterns. The next connection
// (and DNS query) is judged by the new policy; open connections keep
// going.
func (e *egressEngine) Change(ctx context.Context, vm store.VM, ch api.EgressChange) (store.VM, error) {
	if !usesGateway(vm) {
		return vm, api.Errorf(api.CodeConflict, "policies apply to VMs created with --egress allow (or a policy name)",
			"VM %q has egress %s, which no policy governs", vm.Name, vm.Egress)
	}
	if len(ch.Allow)+len(ch.Deny)+len(ch.Remove) == 0 {
		return vm, api.Errorf(api.CodeInvalid, "name at least one pattern", "no egress change")
	}
	for _, list := range [][]string{ch.Allow, ch.Deny} {
		if err := checkPatterns(list, "pattern"); err != nil {
			return vm, err
		}
	}
	e.changeMu.Lock()
	defer e.changeMu.Unlock()
	cur, err := e.store.GetVM(ctx, vm.ID)
	if err != nil {
		return vm, err
	}
	allow, deny := cur.EgressAllow, cur.EgressDeny
	drop := func(l []string, pats []string) []string {
		return slices.DeleteFunc(slices.Clone(l), func(p string) bool { return slices.Contains(pats, p) })
	}
	// A pattern moved from one list to the other leaves the first.
	allow = addPatterns(drop(allow, append(slices.Clone(ch.Remove), ch.Deny...)), ch.Allow)
	deny = addPatterns(drop(deny, append(slices.Clone(ch.Remove), ch.Allow...)), ch.Deny)
	if err := e.store.SetVMEgress(ctx, cur.ID, allow, deny); err != nil {
		return vm, err
	}
	e.invalidate(cur.ID)
	cur.EgressAllow, cur.EgressDeny = allow, deny
	e.log.Info("egress policy changed", "vm", cur.Name, "allow", allow, "deny", deny)
	return cur, nil
}

func addPatterns(l, add []string) []string {
	for _, p := range add {
		if !slices.Contains(l, p) {
			l = append(l, p)
		}
	}
	return l
}

// checkPatterns explains the first pattern egress.ParseRule refuses.
func checkPatterns(pats []string, what string) error {
	for _, p := range pats {
		if _, err := egress.ParseRule(p); err != nil {
			return api.Errorf(api.CodeInvalid, "use a host (api.example.com), *.suffix (*.example.com) or CIDR (192.0.2.0/24), each with an optional :port",
				"bad egress %s %q: %v", what, p, err)
		}
	}
	return nil
}

// Log is VM vm's log rows that q selects, oldest first.
func (e *egressEngine) Log(ctx context.Context, vm store.VM, q api.EgressLogQuery) ([]api.EgressRecord, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = egressLogDefaultLimit
	}
	if q.Limit < 0 || limit > api.MaxEgressLogLimit {
		return nil, api.Errorf(api.CodeInvalid, fmt.Sprintf("use a limit from 1 to %d", api.MaxEgressLogLimit), "bad limit %d", q.Limit)
	}
	rows, err := e.store.ListEgressLog(ctx, vm.ID, store.EgressFilter{Denied: q.Denied, After: q.After, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := make([]api.EgressRecord, 0, len(rows))
	for _, r := range rows {
		out = append(out, recordView(r, vm.Name))
	}
	return out, nil
}

// Learn is the smallest allowlist that would have let VM vm's logged
// connections through (egress.Learn over its whole kept log).
func (e *egressEngine) Learn(ctx context.Context, vm store.VM) (api.EgressLearned, error) {
	rows, err := e.store.ListEgressLog(ctx, vm.ID, store.EgressFilter{})
	if err != nil {
		return api.EgressLearned{}, err
	}
	recs := make([]egress.Record, 0, len(rows))
	for _, r := range rows {
		recs = append(recs, egressRecord(r, vm.Name))
	}
	allow := egress.Learn(recs)
	if allow == nil {
		allow = []string{}
	}
	return api.EgressLearned{VM: vm.Name, Allow: allow}, nil
}

// resolveEgress turns a create request's --egress, --allow and
// --credentials into the VM's mode, policy, own patterns and credentials
// mode, with errors that list what is valid.
func resolveEgress(cfg config.Config, req *api.CreateVMRequest) (mode, policy string, err error) {
	mode = req.Egress
	if mode == "" {
		mode = cfg.VM.Egress
		if len(req.Allow) > 0 {
			// --allow alone means the gateway.
			mode = config.EgressAllow
		}
	}
	set := cfg.Egress.PolicySet()
	switch mode {
	case config.EgressAll, config.EgressNone:
		if len(req.Allow) > 0 {
			return "", "", api.Errorf(api.CodeInvalid, "drop --allow, or use --egress allow (or a policy name)",
				"--allow needs the egress gateway, not egress %s", mode)
		}
	case config.EgressAllow:
		policy = req.EgressPolicy
		if policy == "" {
			policy = cfg.Egress.DefaultPolicy
		}
		if _, ok := set[policy]; !ok {
			return "", "", api.Errorf(api.CodeInvalid,
				fmt.Sprintf("use one of the policies: %s (policies come from [egress.policy.NAME] in the config)", strings.Join(cfg.Egress.PolicyNames(), ", ")),
				"unknown egress policy %q", policy)
		}
	default:
		if _, ok := set[mode]; !ok {
			return "", "", api.Errorf(api.CodeInvalid,
				fmt.Sprintf("use --egress all, none, allow or a policy: %s (policies come from [egress.policy.NAME] in the config)", strings.Join(cfg.Egress.PolicyNames(), ", ")),
				"unknown egress mode or policy %q", mode)
		}
		mode, policy = config.EgressAllow, req.Egress
	}
	if err := checkPatterns(req.Allow, "--allow pattern"); err != nil {
		return "", "", err
	}
	creds := req.Credentials
	if creds == "" {
		creds = cfg.Credentials.Mode
		if creds == config.CredentialsBroker && mode != config.EgressAllow {
			// The broker sits in the gateway; without it, the old way.
			creds = config.CredentialsCopy
		}
	}
	switch creds {
	case config.CredentialsCopy, config.CredentialsNone:
	case config.CredentialsBroker:
		if mode != config.EgressAllow {
			return "", "", api.Errorf(api.CodeInvalid, "use --egress allow (or a policy name), or --credentials copy",
				"--credentials broker needs the egress gateway, not egress %s", mode)
		}
	default:
		return "", "", api.Errorf(api.CodeInvalid, "use --credentials broker, copy or none", "unknown credentials mode %q", creds)
	}
	req.Credentials = creds
	return mode, policy, nil
}

// errVMGone: the supervised VM was deleted, or its VMM is not running.
var errVMGone = errors.New("vm gone")

// gatewayAgent is the egress supervisor's agent: the cached session
// while the VM is still being created (its row says creating), else a
// live one as any request would get it.
func (d *Daemon) gatewayAgent(ctx context.Context, vmID string) (*agentclient.Client, error) {
	if c := d.cachedAgent(vmID); c != nil {
		return c, nil
	}
	vm, err := d.store.GetVM(ctx, vmID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", errVMGone, err)
	}
	if err != nil {
		return nil, err
	}
	if vm.State == api.VMStopped || vm.State == api.VMError || !d.driverFor(vm).Alive(d.proc(vm)) {
		return nil, fmt.Errorf("%w: %s is %s", errVMGone, vm.Name, vm.State)
	}
	return d.agent(ctx, vm)
}

// egressEngine builds the daemon's egress engine once (New).
func (d *Daemon) newEgressEngine(ctx context.Context) (*egressEngine, error) {
	roots, err := loadRootCAs(d.cfg.Egress.UpstreamCAFile)
	if err != nil {
		return nil, err
	}
	deps := egressDeps{
		store:   d.store,
		cfg:     d.cfg.Egress,
		bus:     &d.bus,
		log:     d.log.With("component", "egress"),
		base:    ctx,
		agent:   d.gatewayAgent,
		rootCAs: roots,
	}
	if cb, err := newCredentialBroker(d.layout.DataDir, roots, d.log.With("component", "broker")); err != nil {
		d.log.Warn("credential broker unavailable; VMs in credentials mode broker get no credentials", "err", err)
	} else {
		d.broker = cb
		deps.broker = cb.Interceptor()
	}
	return newEgressEngine(deps), nil
}

// egressAPI is the egress engine over VM names, for the HTTP layer.
type egressAPI struct{ d *Daemon }

func (a egressAPI) EgressShow(ctx context.Context, name string) (api.EgressView, error) {
	vm, err := a.d.getVM(ctx, name)
	if err != nil {
		return api.EgressView{}, err
	}
	return a.d.egress.View(ctx, vm), nil
}

func (a egressAPI) EgressChange(ctx context.Context, name string, ch api.EgressChange) (api.EgressView, error) {
	vm, err := a.d.getVM(ctx, name)
	if err != nil {
		return api.EgressView{}, err
	}
	vm, err = a.d.egress.Change(ctx, vm, ch)
	if err != nil {
		return api.EgressView{}, err
	}
	return a.d.egress.View(ctx, vm), nil
}

func (a egressAPI) EgressLog(ctx context.Context, name string, q api.EgressLogQuery) ([]api.EgressRecord, error) {
	vm, err := a.d.getVM(ctx, name)
	if err != nil {
		return nil, err
	}
	return a.d.egress.Log(ctx, vm, q)
}

func (a egressAPI) EgressLearn(ctx context.Context, name string) (api.EgressLearned, error) {
	vm, err := a.d.getVM(ctx, name)
	if err != nil {
		return api.EgressLearned{}, err
	}
	return a.d.egress.Learn(ctx, vm)
}
