package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// The tap tests run the daemon inside a network namespace of their own,
// so the bridge, the TAPs and the NAT table live there and vanish with it.
// The namespace has no uplink: the NAT rules exist but lead nowhere, and
// the guest reaches nothing outside it.

// tapConfig leaves room for exactly one guest (.2 of a /30; .1 is the
// bridge), which lets the tests see an exhausted subnet for free.
const tapConfig = `[vm]
boot_timeout = "100s"
[network]
subnet = "172.30.0.0/30"
dns = ["172.30.0.1"]
[auth]
files = []
`

type namespace struct{ name string }

// newNamespace creates a network namespace with loopback up, and removes
// it when the test ends, failed or not.
func newNamespace(t testing.TB) *namespace {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &namespace{name: "bgt-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns.name, err, out)
		}
	})
	ns.must(t, "ip", "link", "set", "lo", "up")
	return ns
}

func (ns *namespace) wrap() []string { return []string{"ip", "netns", "exec", ns.name} }

func (ns *namespace) run(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	return string(out), err
}

func (ns *namespace) must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.run(args...)
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", ns.name, strings.Join(args, " "), err, out)
	}
	return out
}

// links returns the namespace's interfaces by name, with their masters
// resolved to names.
func (ns *namespace) links(t testing.TB) map[string]string {
	t.Helper()
	h, err := netns.GetFromName(ns.name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	ls, err := nh.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	byIndex := map[int]string{}
	for _, l := range ls {
		byIndex[l.Attrs().Index] = l.Attrs().Name
	}
	out := map[string]string{}
	for _, l := range ls {
		out[l.Attrs().Name] = byIndex[l.Attrs().MasterIndex]
	}
	return out
}

func (ns *namespace) nftConn(t testing.TB) (*nftables.Conn, func()) {
	t.Helper()
	h, err := netns.GetFromName(ns.name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	return c, func() { h.Close() }
}

func (ns *namespace) tables(t testing.TB) []string {
	return ns.tablesOf(t, nftables.TableFamilyIPv4)
}

func (ns *namespace) tablesOf(t testing.TB, family nftables.TableFamily) []string {
	t.Helper()
	c, done := ns.nftConn(t)
	defer done()
	ts, err := c.ListTablesOfFamily(family)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tb := range ts {
		out = append(out, tb.Name)
	}
	return out
}

// addForeign puts objects banger did not make into the namespace: a TAP,
// a bridge and an nft table. Reconcile and delete must leave them alone.
func (ns *namespace) addForeign(t testing.TB) {
	t.Helper()
	ns.must(t, "ip", "tuntap", "add", "dev", "usertap0", "mode", "tap")
	ns.must(t, "ip", "link", "add", "userbr0", "type", "bridge")
	c, done := ns.nftConn(t)
	defer done()
	c.AddTable(&nftables.Table{Name: "user_table", Family: nftables.TableFamilyIPv4})
	if err := c.Flush(); err != nil {
		t.Fatalf("add foreign nft table: %v", err)
	}
}

func (ns *namespace) checkForeign(t *testing.T) {
	t.Helper()
	links := ns.links(t)
	for _, name := range []string{"usertap0", "userbr0"} {
		if _, ok := links[name]; !ok {
			t.Errorf("foreign link %s was removed", name)
		}
	}
	if !slices.Contains(ns.tables(t), "user_table") {
		t.Error("foreign nft table user_table was removed")
	}
}

// listen opens a TCP listener inside the namespace (on the bridge's
// address, once it exists) that accepts and closes connections: a target
// the guest may or may not reach, depending on its egress.
func (ns *namespace) listen(t testing.TB, addr string) {
	t.Helper()
	ln := ns.listener(t)(addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// listener returns a function that opens TCP listeners inside the
// namespace (a socket stays in the namespace it was made in, so the
// test serves it from its own goroutines). They close when the test ends.
func (ns *namespace) listener(t testing.TB) func(addr string) net.Listener {
	return func(addr string) net.Listener {
		t.Helper()
		ln, err := func() (net.Listener, error) {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				return nil, err
			}
			defer orig.Close()
			h, err := netns.GetFromName(ns.name)
			if err != nil {
				runtime.UnlockOSThread()
				return nil, err
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				runtime.UnlockOSThread()
				return nil, err
			}
			ln, lerr := net.Listen("tcp", addr)
			// A thread that cannot go back stays locked and dies with this
			// goroutine instead of running other code in the namespace.
			if err := netns.Set(orig); err == nil {
				runtime.UnlockOSThread()
			}
			return ln, lerr
		}()
		if err != nil {
			t.Fatalf("listen on %s in %s: %v", addr, ns.name, err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
}

// guestReaches says whether the guest can open a TCP connection to addr.
func guestReaches(t testing.TB, in *instance, vm, addr string) bool {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	r := in.must(t, "vm", "exec", vm, "--", "bash", "-c",
		fmt.Sprintf(`if timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%s'; then echo open; else echo closed; fi`, host, port))
	return strings.TrimSpace(r.stdout) == "open"
}

func instancePrefix(home string) string {
	return layoutOf(home).InstancePrefix()
}

func layoutOf(home string) paths.Layout {
	return paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return home
		}
		return ""
	}, 0)
}

func leases(t *testing.T, home string) []store.Lease {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, layoutOf(home).DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ls, err := st.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// ownedObjects lists what of this instance exists in the namespace.
func ownedObjects(t *testing.T, ns *namespace, prefix string) []string {
	t.Helper()
	var out []string
	for name := range ns.links(t) {
		if strings.HasPrefix(name, prefix) {
			out = append(out, "link "+name)
		}
	}
	for _, tb := range ns.tables(t) {
		if strings.Contains(tb, prefix) {
			out = append(out, "table "+tb)
		}
	}
	for _, tb := range ns.tablesOf(t, nftables.TableFamilyBridge) {
		if strings.Contains(tb, prefix) {
			out = append(out, "bridge table "+tb)
		}
	}
	return out
}

// tapInstance starts a daemon inside a fresh namespace with the cached
// image imported; config is tapConfig unless given.
func tapInstance(t testing.TB, config ...string) (*namespace, *instance) {
	t.Helper()
	requireVM(t)
	ns := newNamespace(t)
	ns.addForeign(t)
	cfg := tapConfig
	if len(config) > 0 {
		cfg = config[0]
	}
	in := newWrappedInstance(t, cfg, ns.wrap())
	t.Cleanup(in.shutdown)
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	return ns, in
}

// sshBanner opens a TCP connection to guest port 22 from inside the
// namespace and returns what sshd says first.
func sshBanner(ns *namespace, addr string) (string, error) {
	return ns.run("bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/22 && timeout 10 head -c 7 <&3", addr))
}

func checkTapVM(t *testing.T, ns *namespace, in *instance, vm api.VM, prefix string) {
	t.Helper()
	if vm.Net != "tap" || vm.Address != "172.30.0.2" {
		t.Fatalf("vm net=%q address=%q, want tap 172.30.0.2", vm.Net, vm.Address)
	}
	bridge, tap := prefix+"br", prefix+"t"+vm.ID[:6]
	if master, ok := ns.links(t)[tap]; !ok || master != bridge {
		t.Errorf("tap %s: present %v, master %q; want attached to %s", tap, ok, master, bridge)
	}
	if !slices.Contains(ns.tables(t), "banger_"+prefix) {
		t.Errorf("nft table banger_%s missing: %v", prefix, ns.tables(t))
	}
	if bt := ns.tablesOf(t, nftables.TableFamilyBridge); !slices.Contains(bt, "banger_"+prefix) {
		t.Errorf("nft bridge table banger_%s missing: %v", prefix, bt)
	}
	// sshd answers on the guest's own address, reached from the namespace.
	if banner, err := sshBanner(ns, vm.Address); err != nil || banner != "SSH-2.0" {
		t.Errorf("tcp connect to %s:22: %q %v", vm.Address, banner, err)
	}
	// `vm ssh` goes to guest-ip:22 with the pinned host key.
	if r := in.runWrapped(context.Background(), nil, ns.wrap(), "vm", "ssh", vm.Name, "--", "cat", "/etc/hostname"); r.code != 0 || strings.TrimSpace(r.stdout) != vm.Name {
		t.Errorf("vm ssh over tap: %s", r)
	}
	// The agent applied the address from banger's kernel command line.
	r := in.must(t, "vm", "exec", vm.Name, "--", "ip", "-4", "-o", "addr", "show")
	if !strings.Contains(r.stdout, "172.30.0.2/30") {
		t.Errorf("guest addresses lack 172.30.0.2/30:\n%s", r.stdout)
	}
	r = in.must(t, "vm", "exec", vm.Name, "--", "cat", "/sys/class/net/eth0/address")
	if mac := strings.TrimSpace(r.stdout); !strings.HasPrefix(mac, "02:") {
		t.Errorf("guest MAC %q is not banger's locally administered one", mac)
	}
	if ls := leases(t, in.home); len(ls) != 1 || ls[0].VMID != vm.ID || ls[0].Tap != tap {
		t.Errorf("leases = %+v, want one for %s on %s", ls, vm.ID, tap)
	}
}

func TestTapNetworking(t *testing.T) {
	ns, in := tapInstance(t)
	prefix := instancePrefix(in.home)

	// Bad input fails before anything exists.
	r := in.run(nil, "vm", "create", "bogus", "--net", "bogus")
	if r.code == 0 || !strings.Contains(r.stderr, "--net user or --net tap") {
		t.Fatalf("--net bogus: %s", r)
	}

	vm := in.createVM(t, "tap1", "--net", "tap")
	checkTapVM(t, ns, in, in.vm(t, vm.Name), prefix)
	// --egress none: the guest cannot open connections to the host (nor
	// through it), while the host's connections to the guest work.
	ns.listen(t, "172.30.0.1:8080")
	if guestReaches(t, in, vm.Name, "172.30.0.1:8080") {
		t.Error("a guest with --egress none reached the host's bridge address")
	}

	// The /30 has one guest address and tap1 holds it.
	entries, _ := os.ReadDir(layoutOf(in.home).VMsDir)
	r = in.run(nil, "vm", "create", "tap2", "--net", "tap", "--egress", "none")
	if r.code == 0 || !strings.Contains(r.stderr, "no free address") {
		t.Fatalf("create in a full subnet: %s", r)
	}
	if after, _ := os.ReadDir(layoutOf(in.home).VMsDir); len(after) != len(entries) {
		t.Errorf("failed create left a VM dir: %d -> %d entries", len(entries), len(after))
	}
	if ls := leases(t, in.home); len(ls) != 1 {
		t.Errorf("failed create changed leases: %+v", ls)
	}
	if r := in.run(nil, "vm", "show", "tap2"); r.code == 0 {
		t.Errorf("failed create left a VM record")
	}

	in.must(t, "vm", "delete", vm.Name)
	if left := ownedObjects(t, ns, prefix); len(left) != 0 {
		t.Errorf("after delete, banger objects remain in the namespace: %v", left)
	}
	if ls := leases(t, in.home); len(ls) != 0 {
		t.Errorf("after delete, leases remain: %+v", ls)
	}
	if _, err := os.Stat(filepath.Join(layoutOf(in.home).VMsDir, vm.ID)); !os.IsNotExist(err) {
		t.Errorf("VM dir still there: %v", err)
	}
	ns.checkForeign(t)
}

func TestTapDaemonKillReadopt(t *testing.T) {
	ns, in := tapInstance(t)
	prefix := instancePrefix(in.home)
	vm := in.createVM(t, "tapk", "--net", "tap", "--egress", "all")
	vm = in.vm(t, vm.Name)
	checkTapVM(t, ns, in, vm, prefix)
	// With egress all the guest reaches the host side of the bridge (the
	// control for TestTapNetworking's egress none check).
	ns.listen(t, "172.30.0.1:8080")
	if !guestReaches(t, in, vm.Name, "172.30.0.1:8080") {
		t.Error("a guest with --egress all cannot reach the bridge address")
	}

	in.killDaemon()
	// While no daemon runs, a TAP of this instance appears that no VM
	// owns (as if a create died after making it): reconcile removes it.
	orphan := prefix + "t0rphan"
	ns.must(t, "ip", "tuntap", "add", "dev", orphan, "mode", "tap")
	in.startDaemon()

	deadline := time.Now().Add(time.Minute)
	for {
		got := in.vm(t, vm.Name)
		if got.State == api.VMRunning && got.PID == vm.PID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM not re-adopted: state %s pid %d (was %d)\n%s", got.State, got.PID, vm.PID, in.daemonLog())
		}
		time.Sleep(500 * time.Millisecond)
	}
	checkTapVM(t, ns, in, in.vm(t, vm.Name), prefix)
	if _, ok := ns.links(t)[orphan]; ok {
		t.Errorf("orphan tap %s survived reconcile", orphan)
	}
	ns.checkForeign(t)

	in.must(t, "vm", "delete", vm.Name)
	if left := ownedObjects(t, ns, prefix); len(left) != 0 {
		t.Errorf("after delete, banger objects remain: %v", left)
	}
}
