package tui

import (
	"context"
	"io"
	"slices"
	"sync"

	"github.com/bangerdev/banger/api"
)

// fakeDaemon is a Backend with state, for model tests: it records the
// calls that change things and can pretend to be down.
type fakeDaemon struct {
	mu       sync.Mutex
	down     bool
	vms      []api.VM
	images   []api.Image
	ops      []api.Operation
	sessions map[string][]api.Session
	console  map[string]string
	health   map[string]api.Health
	egress   map[string][]api.EgressRecord
	stopErr  error

	// sessionsOf records the VMs whose sessions were listed.
	sessionsOf []string

	created []api.CreateVMRequest
	stopped []string
	deleted []string
	calls   int
}

var errDown = &api.Error{Code: api.CodeUnavailable, Message: "no banger daemon is answering on /run/banger/banger.sock", Hint: "start one with `banger daemon`"}

func (f *fakeDaemon) check() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down {
		return errDown
	}
	return nil
}

func (f *fakeDaemon) setDown(v bool) {
	f.mu.Lock()
	f.down = v
	f.mu.Unlock()
}

func (f *fakeDaemon) ListVMs(context.Context) ([]api.VM, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.vms), nil
}

func (f *fakeDaemon) ListImages(context.Context) ([]api.Image, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return slices.Clone(f.images), nil
}

func (f *fakeDaemon) ListOperations(context.Context) ([]api.Operation, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return slices.Clone(f.ops), nil
}

func (f *fakeDaemon) ListSessions(_ context.Context, vm string) ([]api.Session, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessionsOf = append(f.sessionsOf, vm)
	return slices.Clone(f.sessions[vm]), nil
}

func (f *fakeDaemon) find(name string) (api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, vm := range f.vms {
		if vm.Name == name {
			return vm, nil
		}
	}
	return api.VM{}, &api.Error{Code: api.CodeNotFound, Message: "no VM " + name}
}

func (f *fakeDaemon) GetVM(_ context.Context, name string) (api.VM, error) {
	if err := f.check(); err != nil {
		return api.VM{}, err
	}
	return f.find(name)
}

func (f *fakeDaemon) Health(_ context.Context, name string) (api.Health, error) {
	if err := f.check(); err != nil {
		return api.Health{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.health[name], nil
}

func (f *fakeDaemon) Logs(_ context.Context, name string, _ bool, w io.Writer) error {
	if err := f.check(); err != nil {
		return err
	}
	f.mu.Lock()
	s := f.console[name]
	f.mu.Unlock()
	_, err := io.WriteString(w, s)
	return err
}

func (f *fakeDaemon) CreateVM(_ context.Context, req api.CreateVMRequest) (api.OperationRef, error) {
	if err := f.check(); err != nil {
		return api.OperationRef{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req)
	return api.OperationRef{ID: "op123"}, nil
}

func (f *fakeDaemon) StopVM(_ context.Context, name string, _ bool) (api.VM, error) {
	if err := f.check(); err != nil {
		return api.VM{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopErr != nil {
		return api.VM{}, f.stopErr
	}
	f.stopped = append(f.stopped, name)
	for i := range f.vms {
		if f.vms[i].Name == name {
			f.vms[i].State = api.VMStopped
			f.vms[i].StartedAt = nil
			return f.vms[i], nil
		}
	}
	return api.VM{}, &api.Error{Code: api.CodeNotFound, Message: "no VM " + name}
}

func (f *fakeDaemon) RestartVM(_ context.Context, name string) (api.VM, error) {
	if err := f.check(); err != nil {
		return api.VM{}, err
	}
	return f.find(name)
}

func (f *fakeDaemon) DeleteVM(_ context.Context, name string, _ bool) error {
	if err := f.check(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, name)
	f.vms = slices.DeleteFunc(f.vms, func(v api.VM) bool { return v.Name == name })
	return nil
}

func (f *fakeDaemon) WatchEvents(ctx context.Context, _ string, _ func(api.BusEvent)) error {
	if err := f.check(); err != nil {
		return err
	}
	// Tests inject events as busMsg; the stream just stays open.
	<-ctx.Done()
	return nil
}

func (f *fakeDaemon) EgressLog(_ context.Context, name string, _ api.EgressLogQuery) ([]api.EgressRecord, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.egress[name]), nil
}
