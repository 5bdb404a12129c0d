package network

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread moved into a fresh network namespace
// with only loopback up; the thread is never reused.
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	if unix.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and nftables")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread dies with the goroutine instead of
		// running other code in the namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Errorf("lo up: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// dialAs connects to addr from a socket created while this thread's
// filesystem uid is uid: the socket's owner, which `meta skuid` matches,
// as for a QEMU running as that uid.
func dialAs(uid int, network, addr string) error {
	old, _ := unix.SetfsuidRetUid(uid)
	defer unix.Setfsuid(old)
	c, err := net.DialTimeout(network, addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

func listenAs(t *testing.T, uid int, network, addr string) net.Listener {
	old, _ := unix.SetfsuidRetUid(uid)
	defer unix.Setfsuid(old)
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// A VMM uid cannot open connections to the host's loopback (what a
// guest reaches through slirp's 10.0.2.2), while other users can, the
// VMM's own forwards still answer, and DNS stays reachable.
func TestLocalGuard(t *testing.T) {
	const vmmUID, otherUID = 3000005, 1000
	inNetns(t, func() {
		ctx := context.Background()
		var lns []net.Listener
		defer func() {
			for _, l := range lns {
				l.Close()
			}
		}()
		svc4 := listenAs(t, 0, "tcp4", "127.0.0.1:0")
		svc6 := listenAs(t, 0, "tcp6", "[::1]:0")
		dns := listenAs(t, 0, "tcp4", "127.0.0.53:53")
		// A forward: the VMM's own listening socket, which the host dials.
		fwd := listenAs(t, vmmUID, "tcp4", "127.0.0.1:0")
		lns = append(lns, svc4, svc6, dns, fwd)

		// Without the guard the VMM reaches the host's services: the hole.
		if err := dialAs(vmmUID, "tcp4", svc4.Addr().String()); err != nil {
			t.Fatalf("control: without the guard: %v", err)
		}
		// A stand-in for the tap subnet: routed, but nothing answers.
		dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bgveth0"}, PeerName: "bgveth1"}
		if err := netlink.LinkAdd(dummy); err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr("10.99.0.1/24")
		if err := netlink.AddrAdd(dummy, addr); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(dummy); err != nil {
			t.Fatal(err)
		}
		g := LocalGuard{Table: "banger_test_vmm", First: 3000000, Last: 3000009, Blocked: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}}
		k := Kernel{}
		if err := k.ApplyLocalGuard(ctx, g); err != nil {
			t.Fatal(err)
		}
		// Applying twice replaces, it does not stack or fail.
		if err := k.ApplyLocalGuard(ctx, g); err != nil {
			t.Fatal(err)
		}
		for _, a := range []struct{ network, addr string }{{"tcp4", svc4.Addr().String()}, {"tcp6", svc6.Addr().String()}} {
			err := dialAs(vmmUID, a.network, a.addr)
			if err == nil {
				t.Errorf("VMM uid reached %s", a.addr)
			} else if !errorsIsRefused(err) {
				t.Errorf("VMM uid to %s: %v, want a quick connection refused", a.addr, err)
			}
		}
		// Another VM on the tap subnet: refused at once.
		if err := dialAs(vmmUID, "tcp4", "10.99.0.2:22"); !errorsIsRefused(err) {
			t.Errorf("VMM uid to the tap subnet: %v, want connection refused", err)
		}
		// Others are not affected (the dial times out: nothing there).
		if err := dialAs(otherUID, "tcp4", "10.99.0.2:22"); errorsIsRefused(err) {
			t.Errorf("a uid outside the range was refused the tap subnet")
		}
		for _, c := range []struct {
			uid  int
			addr string
			why  string
		}{
			{0, svc4.Addr().String(), "root"},
			{otherUID, svc4.Addr().String(), "a uid outside the range"},
			{vmmUID, dns.Addr().String(), "DNS"},
			{0, fwd.Addr().String(), "the host dialing the VMM's forward"},
		} {
			if err := dialAs(c.uid, "tcp4", c.addr); err != nil {
				t.Errorf("%s: %v", c.why, err)
			}
		}
		if err := k.DeleteLocalGuard(ctx, g.Table); err != nil {
			t.Fatal(err)
		}
		if err := k.DeleteLocalGuard(ctx, g.Table); err != nil {
			t.Fatalf("deleting a missing table: %v", err)
		}
		if err := dialAs(vmmUID, "tcp4", svc4.Addr().String()); err != nil {
			t.Errorf("after delete: %v", err)
		}
	})
}

func errorsIsRefused(err error) bool {
	var se syscall.Errno
	for e := err; e != nil; {
		if x, ok := e.(syscall.Errno); ok {
			se = x
			break
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return se == syscall.ECONNREFUSED
}

func TestGuardTableName(t *testing.T) {
	if got := (Names{Prefix: "bg123456"}).GuardTable(); got != "banger_bg123456_vmm" {
		t.Fatal(got)
	}
	if rules := guardRules(LocalGuard{First: 1, Last: 2}); len(rules) != 4 {
		t.Fatalf("%d rules", len(rules))
	}
	// Two more per IPv4 network blocked; IPv6 ones are not supported.
	if rules := guardRules(LocalGuard{First: 1, Last: 2, Blocked: []netip.Prefix{netip.MustParsePrefix("172.30.0.0/24"), netip.MustParsePrefix("fd00::/64")}}); len(rules) != 6 {
		t.Fatalf("%d rules", len(rules))
	}
}
