package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/network"
	"github.com/bangerdev/banger/internal/store"
)

// newNetwork builds the tap-mode manager of this instance. The config was
// validated at load, so a bad subnet here is a programming error.
func (d *Daemon) newNetwork(host network.Host) (*network.Manager, error) {
	subnet, err := network.ParseSubnet(d.cfg.Network.Subnet)
	if err != nil {
		return nil, fmt.Errorf("network.subnet: %w", err)
	}
	names := network.Names{Prefix: d.layout.InstancePrefix()}
	if err := names.Check(); err != nil {
		return nil, err
	}
	return &network.Manager{Host: host, Names: names, Subnet: subnet, Log: d.log.With("component", "network"),
		StateDir: d.layout.DataDir}, nil
}

// netDeps is what the network engine needs from the daemon.
type netDeps struct {
	store *store.Store
	// mgr runs tap mode: bridge, TAPs and NAT of this instance.
	mgr *network.Manager
	// mu serialises changes to mgr, since each rewrites the NAT table;
	// the daemon keeps it, so it outlives the engine value.
	mu  *sync.Mutex
	log *slog.Logger
	// defaultNet is [vm] net, the mode of a create that names none.
	defaultNet string
	// dns is [network] dns, the guest's resolvers (empty: the host's).
	dns []string
	// uids is [vmm_process] uid_range, the users the local guard covers.
	uids config.IDRange
}

// netEngine is tap networking (leases, TAPs, bridge, NAT) and the local
// guard of user-mode VMMs. Its values are cheap: the daemon makes one per
// use over its own state.
type netEngine struct {
	netDeps
}

func newNetEngine(deps netDeps) *netEngine {
	return &netEngine{netDeps: deps}
}

// netEngine builds the daemon's network engine over its state.
func (d *Daemon) netEngine() *netEngine {
	return newNetEngine(netDeps{
		store:      d.store,
		mgr:        d.net,
		mu:         &d.netMu,
		log:        d.log,
		defaultNet: d.cfg.VM.Net,
		dns:        d.cfg.Network.DNS,
		uids:       d.cfg.VMMProcess.UIDs(),
	})
}

func isTap(vm store.VM) bool { return vm.NetMode == config.NetTap }

// validateNet fills and checks the network mode of a create request, and
// refuses a tap VM when the subnet has no address left, before anything
// exists.
func (e *netEngine) validateNet(ctx context.Context, req *api.CreateVMRequest) error {
	if req.Net == "" {
		req.Net = e.defaultNet
	}
	if req.Net != config.NetUser && req.Net != config.NetTap {
		return api.Errorf(api.CodeInvalid, "use --net user or --net tap", "unknown network mode %q", req.Net)
	}
	if req.Net != config.NetTap {
		return nil
	}
	leases, err := e.store.ListLeases(ctx)
	if err != nil {
		return err
	}
	used := map[netip.Addr]bool{}
	for _, l := range leases {
		used[l.Addr.Addr()] = true
	}
	if _, ok := store.FirstFreeAddr(e.mgr.Subnet, used); !ok {
		return api.Errorf(api.CodeUnavailable, "delete a tap VM, or choose a larger [network] subnet in the config and restart the daemon",
			"no free address left in the tap subnet %s (%d VMs hold one)", e.mgr.Subnet, len(leases))
	}
	return nil
}

// netMembers lists every leased VM as the network plan needs it, leaving
// out skipVM (a VM on its way out).
func (e *netEngine) netMembers(ctx context.Context, skipVM string) ([]network.Member, error) {
	leases, err := e.store.ListLeases(ctx)
	if err != nil {
		return nil, err
	}
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	egress := map[string]string{}
	for _, vm := range vms {
		egress[vm.ID] = netEgress(vm)
	}
	var out []network.Member
	for _, l := range leases {
		if l.VMID == skipVM {
			continue
		}
		mac := l.MAC
		if mac == "" {
			mac = network.MAC(l.VMID) // what leaseNet would have stored
		}
		out = append(out, network.Member{Tap: l.Tap, MAC: mac, Addr: l.Addr.Addr(), Isolated: egress[l.VMID] == config.EgressNone})
	}
	return out, nil
}

// leaseNet gives a new tap VM its address, TAP name and MAC; undo
// releases them.
func (e *netEngine) leaseNet(ctx context.Context, vm *store.VM, undo *cleanup) error {
	tap := e.mgr.Names.Tap(vm.ID)
	l, err := e.store.AllocateLease(ctx, vm.ID, e.mgr.Subnet, tap, network.MAC(vm.ID))
	switch {
	case errors.Is(err, store.ErrExhausted):
		return api.Errorf(api.CodeUnavailable, "delete a tap VM, or choose a larger [network] subnet", "no free address left in the tap subnet %s", e.mgr.Subnet)
	case err != nil:
		return fmt.Errorf("allocate address: %w", err)
	}
	undo.push(func() {
		_ = e.store.ReleaseLease(context.WithoutCancel(ctx), vm.ID)
	})
	e.log.Info("leased tap address", "vm", vm.Name, "addr", l.Addr, "tap", l.Tap)
	return nil
}

// attachNet makes sure the VM's TAP, the bridge and the NAT table exist.
// Calls are serialised: each rewrites the instance's NAT table from the
// leases.
func (e *netEngine) attachNet(ctx context.Context, vm store.VM, undo *cleanup) error {
	l, err := e.store.LeaseForVM(ctx, vm.ID)
	if err != nil {
		return fmt.Errorf("lease of %s: %w", vm.Name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	members, err := e.netMembers(ctx, "")
	if err != nil {
		return err
	}
	if undo != nil {
		undo.push(func() { _ = e.detachNet(context.WithoutCancel(ctx), vm) })
	}
	if err := e.mgr.Attach(ctx, l.Tap, members); err != nil {
		return api.Errorf(api.CodeUnavailable, "tap networking needs root (CAP_NET_ADMIN) and /dev/net/tun; `--net user` works without", "%v", err)
	}
	return nil
}

// detachNet removes the VM's TAP (and the bridge and NAT table with the
// last tap VM). The lease is released by the caller.
func (e *netEngine) detachNet(ctx context.Context, vm store.VM) error {
	l, err := e.store.LeaseForVM(ctx, vm.ID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	members, err := e.netMembers(ctx, vm.ID)
	if err != nil {
		return err
	}
	return e.mgr.Detach(ctx, l.Tap, members)
}

// reconcileNetwork drops leases of VMs that no longer exist, then lets the
// manager remove this instance's orphans (TAPs without a lease; bridge
// and NAT table when no tap VM is left) and restore what leased VMs need.
func (e *netEngine) reconcileNetwork(ctx context.Context) error {
	leases, err := e.store.ListLeases(ctx)
	if err != nil {
		return err
	}
	for _, l := range leases {
		if _, err := e.store.GetVM(ctx, l.VMID); errors.Is(err, store.ErrNotFound) {
			if err := e.store.ReleaseLease(ctx, l.VMID); err != nil {
				return err
			}
			e.log.Info("released lease of a deleted VM", "vm_id", l.VMID, "addr", l.Addr)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	members, err := e.netMembers(ctx, "")
	if err != nil {
		return err
	}
	return e.mgr.Reconcile(ctx, members)
}

// closeNetwork runs at shutdown: with no tap VM left, IPv4 forwarding
// goes back to what banger found, in case the last teardown could not
// (another instance still had tap VMs then). With tap VMs it stays on:
// they keep running without the daemon.
func (e *netEngine) closeNetwork(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ls, err := e.store.ListLeases(ctx)
	if err != nil || len(ls) > 0 {
		return
	}
	if err := e.mgr.RestoreForwarding(ctx); err != nil {
		e.log.Warn("restore ip_forward", "err", err)
	}
}

// tapKernelArgs are the guest NIC keys the agent applies at boot.
func (e *netEngine) tapKernelArgs(l store.Lease) []string {
	args := []string{"banger.ip=" + l.Addr.String(), "banger.gw=" + network.Gateway(e.mgr.Subnet).Addr().String()}
	dns := e.dns
	if len(dns) == 0 {
		dns = hostResolvers("/etc/resolv.conf")
	}
	if len(dns) > 0 {
		args = append(args, "banger.dns="+strings.Join(dns, ","))
	}
	return args
}

// localGuard is the instance's guard and its kernel side; ok is false
// when the network host cannot filter (a test fake) or per-VM users
// are off.
func (e *netEngine) localGuard() (network.Guard, network.LocalGuard, bool) {
	r := e.uids
	g, ok := e.mgr.Host.(network.Guard)
	if !ok || r.Empty() || os.Geteuid() != 0 {
		return nil, network.LocalGuard{}, false
	}
	// The tap subnet too: other VMs live there.
	return g, network.LocalGuard{Table: e.mgr.Names.GuardTable(), First: r.First, Last: r.Last, Blocked: []netip.Prefix{e.mgr.Subnet}}, true
}

func (e *netEngine) applyLocalGuard(ctx context.Context) error {
	g, lg, ok := e.localGuard()
	if !ok {
		return nil
	}
	return g.ApplyLocalGuard(ctx, lg)
}

// syncLocalGuard keeps the guard exactly while a user-mode VM with
// egress all may run: VMMs outlive the daemon, so at start and at
// shutdown it is applied if one is running and removed otherwise.
func (e *netEngine) syncLocalGuard(ctx context.Context) {
	g, lg, ok := e.localGuard()
	if !ok {
		return
	}
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		e.log.Warn("local guard: list VMs", "err", err)
		return
	}
	need := false
	for _, vm := range vms {
		if vm.State == api.VMRunning && !isTap(vm) && vm.Egress == config.EgressAll {
			need = true
		}
	}
	if need {
		err = g.ApplyLocalGuard(ctx, lg)
	} else {
		err = g.DeleteLocalGuard(ctx, lg.Table)
	}
	if err != nil {
		e.log.Warn("local guard", "table", lg.Table, "apply", need, "err", err)
	}
}

// hostResolvers returns the IPv4 nameservers of a resolv.conf that a
// guest can use: loopback ones (systemd-resolved's stub) are useless
// from inside a VM.
func hostResolvers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || !a.Is4() || a.IsLoopback() {
			continue
		}
		out = append(out, a.String())
	}
	return out
}

// guestEndpoint is where the host reaches guest port gp of vm: the
// guest's own address in tap mode, the 127.0.0.1 forward otherwise.
func (e *netEngine) guestEndpoint(ctx context.Context, vm store.VM, gp int) (string, error) {
	if isTap(vm) {
		l, err := e.store.LeaseForVM(ctx, vm.ID)
		if err != nil {
			return "", fmt.Errorf("lease of %s: %w", vm.Name, err)
		}
		return netip.AddrPortFrom(l.Addr.Addr(), uint16(gp)).String(), nil
	}
	ports, err := e.store.PortsForVM(ctx, vm.ID)
	if err != nil {
		return "", err
	}
	for _, p := range ports {
		if p.GuestPort == gp {
			return fmt.Sprintf("127.0.0.1:%d", p.Port), nil
		}
	}
	return "", fmt.Errorf("no host port forwards guest port %d", gp)
}
