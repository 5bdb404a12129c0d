package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"

	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// containConfig: user networking with egress all, the mode in which the
// guest reaches whatever the host can.
const containConfig = `[vm]
boot_timeout = "100s"
egress = "all"
[auth]
files = []
`

// procStatus reads the named fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

func (ns *namespace) inetTables(t *testing.T) []string {
	t.Helper()
	c, done := ns.nftConn(t)
	defer done()
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tb := range ts {
		out = append(out, tb.Name)
	}
	return out
}

// TestVMMContainment: a user-mode VM with egress all, under a daemon in
// a network namespace with only loopback (nothing can leave the
// machine). Its QEMU runs as the VM's own uid under seccomp, and the
// guest cannot reach the host's loopback services through slirp's
// 10.0.2.2: neither a listener of the host nor a VM's forward.
func TestVMMContainment(t *testing.T) {
	requireVM(t)
	ns := newNamespace(t)
	in := newWrappedInstance(t, containConfig, ns.wrap())
	t.Cleanup(in.shutdown)
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	const hostPort = "18093"
	ns.listen(t, "127.0.0.1:"+hostPort)

	vm := in.createVM(t, "contain", "--egress", "all")
	vm = in.vm(t, vm.Name)
	if vm.Egress != "all" || vm.Net != "user" {
		t.Fatalf("vm egress %q net %q, want all/user", vm.Egress, vm.Net)
	}

	// The VMM runs as the uid banger allocated for this VM, not root,
	// and under QEMU's seccomp filter.
	st, err := store.Open(context.Background(), layoutOf(in.home).DBPath)
	if err != nil {
		t.Fatal(err)
	}
	uid, err := st.VMMUser(context.Background(), vm.ID)
	st.Close()
	if err != nil {
		t.Fatalf("no uid recorded for the VM: %v", err)
	}
	if uid < 2000000000 || uid > 2000065535 {
		t.Errorf("uid %d outside the default range", uid)
	}
	status := procStatus(t, vm.PID)
	u := strconv.Itoa(int(uid))
	want := strings.Join([]string{u, u, u, u}, " ")
	// No supplementary groups: nothing of root's group comes along.
	if status["Uid"] != want || status["Gid"] != want || status["Groups"] != "" {
		t.Errorf("qemu %d runs as Uid %q Gid %q Groups %q, want %s everywhere and no groups", vm.PID, status["Uid"], status["Gid"], status["Groups"], u)
	}
	if status["Seccomp"] != "2" || status["NoNewPrivs"] != "1" {
		t.Errorf("qemu %d: Seccomp %q NoNewPrivs %q, want a seccomp filter (2) and no_new_privs", vm.PID, status["Seccomp"], status["NoNewPrivs"])
	}
	// Its files: the VM's own are its user's alone; the image's rootfs
	// is untouched (root's, as built).
	dir := layoutOf(in.home).VMDir(vm.ID)
	for _, f := range []string{paths.FileRootDisk, paths.FileSeedDisk, paths.FileWorkDisk} {
		var s syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, f), &s); err != nil {
			t.Fatal(err)
		}
		if s.Uid != uid || s.Mode&0o777 != 0o600 {
			t.Errorf("%s: uid %d mode %o, want %d 0600", f, s.Uid, s.Mode&0o777, uid)
		}
	}
	// The console log is the daemon's (it rotates and caps it); QEMU only
	// holds the console socket's descriptor, and neither the log nor the
	// sockets are its user's.
	for _, f := range []string{paths.FileConsoleLog, paths.FileConsoleSocket, paths.FileQMPSocket, paths.FileAgentSocket} {
		var s syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, f), &s); err != nil {
			t.Fatal(err)
		}
		if s.Uid == uid || s.Mode&0o077 != 0 {
			t.Errorf("%s: uid %d mode %o, want the daemon's and private", f, s.Uid, s.Mode&0o777)
		}
	}
	img := baseImage(t, in)
	var s syscall.Stat_t
	if err := syscall.Stat(filepath.Join(img.Dir, "rootfs.ext4"), &s); err != nil || s.Uid != 0 {
		t.Errorf("image rootfs: uid %d, %v; want root's", s.Uid, err)
	}

	prefix := instancePrefix(in.home)
	if !slices.Contains(ns.inetTables(t), "banger_"+prefix+"_vmm") {
		t.Errorf("guard table missing: %v", ns.inetTables(t))
	}
	// The host reaches the VM through its forward...
	if r := in.runWrapped(context.Background(), nil, ns.wrap(), "vm", "ssh", vm.Name, "--", "cat", "/etc/hostname"); r.code != 0 || strings.TrimSpace(r.stdout) != vm.Name {
		t.Errorf("vm ssh through the forward: %s", r)
	}
	// ...but the guest reaches neither a host service on 127.0.0.1 nor
	// a VM's forward (this VM's own SSH forward: a QEMU listening on the
	// host's loopback, like any other VM's).
	if guestReaches(t, in, vm.Name, "10.0.2.2:"+hostPort) {
		t.Error("the guest reached a host service on 127.0.0.1 through 10.0.2.2")
	}
	if guestReaches(t, in, vm.Name, fmt.Sprintf("10.0.2.2:%d", vm.SSHPort)) {
		t.Error("the guest reached a VM forward on 127.0.0.1 through 10.0.2.2")
	}

	in.must(t, "vm", "delete", vm.Name)
	in.stopDaemon()
	// No VM left: the daemon took its guard table with it.
	if slices.Contains(ns.inetTables(t), "banger_"+prefix+"_vmm") {
		t.Errorf("guard table left after the last VM and the daemon went: %v", ns.inetTables(t))
	}
	in.startDaemon()
}
