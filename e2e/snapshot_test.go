package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// TestSnapshotRestore: a running VM with a file in /root and a session
// whose output advances is snapshotted and goes on running; a VM created
// from the snapshot has the file and the session (listed as its own,
// still advancing) and is a new machine: its own hostname, SSH host key
// (plain ssh with its pin works, the parent's pin does not), machine-id,
// a clock set from the host, and no writable file shared with the
// parent. Then the snapshot's records and deletion rules.
func TestSnapshotRestore(t *testing.T) {
	in := shared(t)
	const (
		name  = "e2e-snap"
		snap  = "e2e-s1"
		child = "e2e-c1"
	)
	vm := in.createVM(t, name)
	defer in.run(nil, "vm", "snapshot", "delete", "--force", snap)
	defer in.run(nil, "vm", "delete", "--force", name)
	defer in.run(nil, "vm", "delete", "--force", child)

	in.guest(t, name, "echo before-snapshot > /root/snapfile && echo shared-at-snapshot > /var/tmp/rootfsfile && sync")
	in.must(t, "vm", "session", "start", name, "--name", "tick", "--", "sh", "-c", tickScript)
	atSnap := in.waitTickPast(t, name, "tick", 2, time.Minute)
	parentBoot := in.guest(t, name, "cat /proc/sys/kernel/random/boot_id")
	parentMachineID := in.guest(t, name, "cat /etc/machine-id")
	parentKey := pinnedKey(t, vm)

	t0 := time.Now()
	r := in.must(t, "vm", "snapshot", name, "--name", snap)
	snapAt := time.Now()
	t.Logf("vm snapshot took %s:\n%s", snapAt.Sub(t0).Round(time.Millisecond), r.stderr)

	t.Run("the source VM goes on running", func(t *testing.T) {
		if st := in.vm(t, name).State; st != api.VMRunning {
			t.Fatalf("%s is %s after vm snapshot (no --stop), want running", name, st)
		}
		if got := in.guest(t, name, "cat /root/snapfile"); got != "before-snapshot" {
			t.Fatalf("%s lost /root/snapfile: %q", name, got)
		}
		if got := in.guest(t, name, "cat /proc/sys/kernel/random/boot_id"); got != parentBoot {
			t.Fatalf("%s rebooted across vm snapshot: boot id %s, was %s", name, got, parentBoot)
		}
		in.waitTickPast(t, name, "tick", atSnap+1, time.Minute)
		if st := in.sessionState(t, name, "tick"); st != api.SessionRunning {
			t.Fatalf("the session in %s is %q after the snapshot", name, st)
		}
		if r := plainSSH(t, in, name, "", "hostname"); r.code != 0 || strings.TrimSpace(r.stdout) != name {
			t.Fatalf("plain ssh to %s with its pin after the snapshot: %s", name, r)
		}
	})

	// A restore that does not set the clock would be off by at least the
	// time since the save: make that larger than the slack.
	if d := 20*time.Second - time.Since(snapAt); d > 0 {
		time.Sleep(d)
	}
	t0 = time.Now()
	c1 := in.createVM(t, child, "--snapshot", snap)
	t.Logf("vm create --snapshot took %s", time.Since(t0).Round(time.Millisecond))

	t.Run("the restored VM continues the snapshot", func(t *testing.T) {
		if c1.State != api.VMRunning || c1.Snapshot != snap {
			t.Errorf("created VM: state %q snapshot %q, want running on %s", c1.State, c1.Snapshot, snap)
		}
		if c1.MemoryBytes != vm.MemoryBytes || c1.CPUs != vm.CPUs || c1.Image != vm.Image {
			t.Errorf("restored VM's shape differs from its source: %+v vs %+v", c1, vm)
		}
		if got := in.guest(t, child, "cat /root/snapfile"); got != "before-snapshot" {
			t.Fatalf("/root/snapfile in %s: %q", child, got)
		}
		if st := in.sessionState(t, child, "tick"); st != api.SessionRunning {
			t.Fatalf("session tick in %s is %q, want running (vm session list: %v)", child, st, in.sessions(t, child))
		}
		n := in.tickCount(t, child, "tick")
		in.waitTickPast(t, child, "tick", n+1, time.Minute)
		in.checkTickHistory(t, child, "tick", atSnap)
	})

	t.Run("the restored VM is a new machine", func(t *testing.T) {
		checkGuestClock(t, in, child, 3*time.Second)
		if got := in.guest(t, child, "hostname"); got != child {
			t.Errorf("hostname of %s is %q", child, got)
		}
		if got := in.guest(t, name, "hostname"); got != name {
			t.Errorf("hostname of the source %s is now %q", name, got)
		}
		if got := in.guest(t, child, "cat /etc/machine-id"); got == parentMachineID || len(got) != 32 {
			t.Errorf("machine-id of %s is %q, the source's %q", child, got, parentMachineID)
		}
		childKey := pinnedKey(t, in.vm(t, child))
		if childKey == parentKey {
			t.Errorf("%s is pinned to its source's host key %s", child, childKey)
		}
		if r := plainSSH(t, in, child, "", "hostname"); r.code != 0 || strings.TrimSpace(r.stdout) != child {
			t.Errorf("plain ssh to %s with its pinned known_hosts: %s", child, r)
		}
		// The restored guest must not serve the source's key any more.
		if r := plainSSH(t, in, child, knownHostsWith(t, in, child, parentKey), "true"); r.code == 0 {
			t.Errorf("%s still serves its source's host key (ssh with the source's pin succeeded)", child)
		}
		if got := in.guest(t, child, "cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f1,2"); got != childKey {
			t.Errorf("%s's /etc/ssh/ssh_host_ed25519_key.pub is %q, pinned %q", child, got, childKey)
		}
	})

	t.Run("no writable file is shared", func(t *testing.T) {
		in.guest(t, child, "echo child > /root/only-child && echo child >> /root/snapfile && echo child > /var/tmp/rootfsfile && sync")
		in.guest(t, name, "echo parent > /root/only-parent && echo parent > /var/tmp/parentfile && sync")
		if got := in.guest(t, name, "cat /root/snapfile /var/tmp/rootfsfile"); got != "before-snapshot\nshared-at-snapshot" {
			t.Errorf("the child's writes reached the source %s: %q", name, got)
		}
		for _, f := range []string{"/root/only-child"} {
			if in.exists(t, name, f) {
				t.Errorf("the child's %s appeared in the source %s", f, name)
			}
		}
		for _, f := range []string{"/root/only-parent", "/var/tmp/parentfile"} {
			if in.exists(t, child, f) {
				t.Errorf("the source's %s appeared in %s", f, child)
			}
		}
		if got := in.guest(t, child, "cat /root/snapfile /var/tmp/rootfsfile"); got != "before-snapshot\nchild\nchild" {
			t.Errorf("the child's own files: %q", got)
		}
	})

	t.Run("snapshot list and show", func(t *testing.T) {
		s, _ := in.snapshotShow(t, snap)
		if s.Kind != api.SnapshotUser || s.VM != name || s.MemoryBytes != vm.MemoryBytes || s.CPUs != vm.CPUs || s.SizeBytes <= 0 || s.CreatedAt.IsZero() {
			t.Errorf("vm snapshot show %s: %+v", snap, s)
		}
		if !contains(s.UsedBy, child) {
			t.Errorf("snapshot %s used by %v, want %s among them", snap, s.UsedBy, child)
		}
		found := false
		for _, l := range in.snapshotList(t) {
			if l.Name == snap {
				found = true
				if !contains(l.UsedBy, child) {
					t.Errorf("vm snapshot list: %s used by %v, want %s", snap, l.UsedBy, child)
				}
			}
		}
		if !found {
			t.Errorf("vm snapshot list lacks %s", snap)
		}
		if r := in.must(t, "vm", "snapshot", "list"); !strings.Contains(r.stdout, snap) || !strings.Contains(r.stdout, child) {
			t.Errorf("vm snapshot list table lacks %s or its user %s:\n%s", snap, child, r.stdout)
		}
		if r := in.must(t, "vm", "snapshot", "show", snap); !strings.Contains(r.stdout, child) {
			t.Errorf("vm snapshot show %s does not name its user %s:\n%s", snap, child, r.stdout)
		}
	})

	t.Run("delete is refused while VMs stand on it", func(t *testing.T) {
		dir := in.snapshotDir(t, snap)
		s, _ := in.snapshotShow(t, snap)
		// Whoever stands on the snapshot: the child, and the source if
		// its disks became overlays on the snapshot's layers.
		users := append([]string(nil), s.UsedBy...)
		sort.Strings(users)
		r := in.run(nil, "vm", "snapshot", "delete", snap)
		if r.code == 0 {
			t.Fatalf("vm snapshot delete %s succeeded while %v stand on it", snap, users)
		}
		for _, u := range users {
			if !strings.Contains(r.stderr, u) {
				t.Errorf("refusal does not name %s: %s", u, r)
			}
		}
		if got := in.guest(t, child, "cat /root/only-child"); got != "child" {
			t.Fatalf("%s after the refused delete: %q", child, got)
		}
		in.must(t, "vm", "delete", "--force", child)
		s, _ = in.snapshotShow(t, snap)
		if contains(s.UsedBy, child) {
			t.Errorf("snapshot %s still used by the deleted %s: %v", snap, child, s.UsedBy)
		}
		if contains(s.UsedBy, name) {
			// The source stands on it: a plain delete names it; --force
			// flattens the stopped source first, which keeps its data.
			if in.vm(t, name).Snapshot != snap {
				t.Errorf("snapshot %s lists %s as a user but vm show %s names snapshot %q", snap, name, name, in.vm(t, name).Snapshot)
			}
			r := in.run(nil, "vm", "snapshot", "delete", snap)
			if r.code == 0 || !strings.Contains(r.stderr, name) || strings.Contains(r.stderr, child) {
				t.Fatalf("delete with only the source %s on it: %s", name, r)
			}
			in.must(t, "vm", "stop", name)
			in.must(t, "vm", "snapshot", "delete", "--force", snap)
			in.must(t, "vm", "start", name)
			if got := in.guest(t, name, "cat /root/snapfile /root/only-parent"); got != "before-snapshot\nparent" {
				t.Errorf("%s after its snapshot was flattened and deleted: %q", name, got)
			}
			if v := in.vm(t, name); v.Snapshot != "" {
				t.Errorf("%s still names snapshot %q after the delete", name, v.Snapshot)
			}
		} else {
			in.must(t, "vm", "snapshot", "delete", snap)
		}
		if r := in.run(nil, "vm", "snapshot", "show", snap); r.code == 0 || !regexp.MustCompile(`(?i)no snapshot|not found`).MatchString(r.stderr) {
			t.Errorf("show after delete: %s", r)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("snapshot dir %s left behind: %v", dir, err)
		}
		checkSnapshotDirs(t, in, "after delete")
	})
}

// TestFork: `vm fork` makes running children, each its own machine
// (name, hostname, machine-id, host key, random state), reachable by
// ssh, and independent of each other and of the parent.
func TestFork(t *testing.T) {
	in := shared(t)
	const (
		name   = "e2e-fork"
		prefix = "e2e-f"
	)
	in.createVM(t, name)
	children := []string{prefix + "-1", prefix + "-2"}
	var forkSnap string
	defer func() {
		for _, c := range children {
			in.run(nil, "vm", "delete", "--force", c)
		}
		in.run(nil, "vm", "delete", "--force", name)
		if forkSnap != "" {
			in.run(nil, "vm", "snapshot", "delete", "--force", forkSnap)
		}
	}()
	in.guest(t, name, "echo from-parent > /root/marker && sync")
	in.must(t, "vm", "session", "start", name, "--name", "tick", "--", "sh", "-c", tickScript)
	in.waitTickPast(t, name, "tick", 1, time.Minute)
	parentID := in.guest(t, name, "cat /etc/machine-id")

	t0 := time.Now()
	r := in.must(t, "vm", "fork", name, "--count", "2", "--prefix", prefix, "--json")
	t.Logf("vm fork --count 2 took %s:\n%s", time.Since(t0).Round(time.Millisecond), in.lastOpStages(t, "vm.fork"))
	var res api.ForkResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("parse vm fork --json: %v\n%s", err, r.stdout)
	}
	forkSnap = res.Snapshot
	var got []string
	for _, v := range res.VMs {
		got = append(got, v.Name)
		if v.State != api.VMRunning {
			t.Errorf("fork child %s is %s", v.Name, v.State)
		}
	}
	if strings.Join(got, ",") != strings.Join(children, ",") || forkSnap == "" {
		t.Fatalf("fork result: snapshot %q children %v, want %v", forkSnap, got, children)
	}
	if st := in.vm(t, name).State; st != api.VMRunning {
		t.Fatalf("parent %s is %s after the fork", name, st)
	}

	// Random state first, before anything else stirs the children's
	// entropy pools: forks must not produce the same bytes.
	rnd := map[string]string{}
	for _, c := range append([]string{name}, children...) {
		rnd[c] = in.guest(t, c, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
	}
	if rnd[children[0]] == rnd[children[1]] || rnd[children[0]] == rnd[name] || rnd[children[1]] == rnd[name] {
		t.Errorf("forks share random state: /dev/urandom gave %v", rnd)
	}

	ids := map[string]string{name: parentID}
	keys := map[string]string{}
	for _, c := range children {
		if got := in.guest(t, c, "hostname"); got != c {
			t.Errorf("hostname of %s is %q", c, got)
		}
		id := in.guest(t, c, "cat /etc/machine-id")
		for other, oid := range ids {
			if oid == id {
				t.Errorf("%s has the machine-id of %s: %s", c, other, id)
			}
		}
		ids[c] = id
		key := pinnedKey(t, in.vm(t, c))
		for other, k := range keys {
			if k == key {
				t.Errorf("%s and %s are pinned to the same host key", c, other)
			}
		}
		keys[c] = key
		if r := in.run(nil, "vm", "ssh", c, "--", "cat", "/root/marker"); r.code != 0 || r.stdout != "from-parent\n" {
			t.Errorf("vm ssh %s: %s", c, r)
		}
		if r := plainSSH(t, in, c, "", "hostname"); r.code != 0 || strings.TrimSpace(r.stdout) != c {
			t.Errorf("plain ssh to %s: %s", c, r)
		}
		if st := in.sessionState(t, c, "tick"); st != api.SessionRunning {
			t.Errorf("session tick in %s is %q", c, st)
		}
	}

	// What one child does, the other does not see.
	in.guest(t, children[0], "rm /root/marker && echo f1 > /root/only-f1 && echo f1 > /etc/fork-f1 && sync")
	in.must(t, "vm", "session", "stop", children[0], "tick", "--timeout", "3s")
	for _, other := range []string{children[1], name} {
		if got := in.guest(t, other, "cat /root/marker"); got != "from-parent" {
			t.Errorf("f-1 removed /root/marker, and in %s it is %q", other, got)
		}
		for _, f := range []string{"/root/only-f1", "/etc/fork-f1"} {
			if in.exists(t, other, f) {
				t.Errorf("f-1's %s appeared in %s", f, other)
			}
		}
	}
	if st := in.sessionState(t, children[1], "tick"); st != api.SessionRunning {
		t.Errorf("stopping tick in %s stopped it in %s too (%q)", children[0], children[1], st)
	}
	n := in.tickCount(t, children[1], "tick")
	in.waitTickPast(t, children[1], "tick", n, time.Minute)
	if st := in.sessionState(t, children[0], "tick"); st == api.SessionRunning {
		t.Errorf("session tick in %s still running after vm session stop", children[0])
	}
}

// TestParkWake: a parked VM is listed as parked and has no VMM process;
// exec, ssh and `vm start` each wake it, and it is the same machine (same
// boot, files and running session), its clock set again from the host.
func TestParkWake(t *testing.T) {
	in := shared(t)
	const name = "e2e-park"
	vm := in.createVM(t, name)
	defer in.run(nil, "vm", "delete", "--force", name)
	in.guest(t, name, "echo parked-data > /root/parkfile && sync")
	in.must(t, "vm", "session", "start", name, "--name", "tick", "--", "sh", "-c", tickScript)
	before := in.waitTickPast(t, name, "tick", 1, time.Minute)
	bootID := in.guest(t, name, "cat /proc/sys/kernel/random/boot_id")

	park := func(t *testing.T) {
		t.Helper()
		t0 := time.Now()
		r := in.must(t, "vm", "park", name, "--json")
		t.Logf("vm park took %s", time.Since(t0).Round(time.Millisecond))
		var v api.VM
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.State != api.VMParked {
			t.Fatalf("vm park --json: %v: %s", err, r)
		}
		var vms []api.VM
		json.Unmarshal([]byte(in.must(t, "vm", "list", "--json").stdout), &vms)
		listed := ""
		for _, x := range vms {
			if x.Name == name {
				listed = x.State
			}
		}
		if listed != api.VMParked {
			t.Fatalf("vm list --json shows %s as %q", name, listed)
		}
		if table := in.must(t, "vm", "list").stdout; !regexp.MustCompile(`(?m)^` + name + `\s.*\bparked\b`).MatchString(table) {
			t.Fatalf("vm list table does not show %s parked:\n%s", name, table)
		}
		if pids := vmProcesses(in.home, vm.ID); len(pids) != 0 {
			t.Fatalf("parked VM still has processes %v", pids)
		}
		// Parked long enough that a wake which does not set the clock
		// shows it.
		time.Sleep(10 * time.Second)
	}
	awake := func(t *testing.T, how string) {
		t.Helper()
		v := in.vm(t, name)
		if v.State != api.VMRunning || v.PID == 0 || len(vmProcesses(in.home, vm.ID)) == 0 {
			t.Fatalf("after waking by %s: state %q pid %d processes %v", how, v.State, v.PID, vmProcesses(in.home, vm.ID))
		}
		if got := in.guest(t, name, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Fatalf("waking by %s rebooted the guest: boot id %s, was %s", how, got, bootID)
		}
		checkGuestClock(t, in, name, 3*time.Second)
		if st := in.sessionState(t, name, "tick"); st != api.SessionRunning {
			t.Fatalf("session tick after waking by %s: %q", how, st)
		}
		n := in.tickCount(t, name, "tick")
		before = in.waitTickPast(t, name, "tick", n, time.Minute)
		in.checkTickHistory(t, name, "tick", before)
	}

	t.Run("exec wakes", func(t *testing.T) {
		park(t)
		t0 := time.Now()
		r := in.run(nil, "vm", "exec", name, "--", "cat", "/root/parkfile")
		if r.code != 0 || r.stdout != "parked-data\n" {
			t.Fatalf("vm exec on the parked VM: %s", r)
		}
		t.Logf("exec on the parked VM answered in %s", time.Since(t0).Round(time.Millisecond))
		awake(t, "exec")
	})
	t.Run("ssh wakes", func(t *testing.T) {
		park(t)
		if r := in.run(nil, "vm", "ssh", name, "--", "cat", "/root/parkfile"); r.code != 0 || r.stdout != "parked-data\n" {
			t.Fatalf("vm ssh on the parked VM: %s", r)
		}
		awake(t, "ssh")
	})
	t.Run("start wakes", func(t *testing.T) {
		park(t)
		in.must(t, "vm", "start", name)
		awake(t, "vm start")
	})
	t.Run("delete a parked VM", func(t *testing.T) {
		park(t)
		in.must(t, "vm", "delete", name)
		if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
			t.Errorf("parked VM's dir %s left behind: %v", vm.Dir, err)
		}
		if pids := vmProcesses(in.home, vm.ID); len(pids) != 0 {
			t.Errorf("processes of the deleted parked VM: %v", pids)
		}
	})
}

// TestSnapshotFaults: an unknown snapshot, a truncated memory file, a
// truncated device state file and a missing disk layer each fail `vm
// create --snapshot` with an error naming the snapshot, and leave no VM
// row, VM directory or VMM process; the same snapshot repaired restores.
// Then the daemon is killed (SIGKILL) during a save and during a restore,
// and the restarted daemon has nothing half-made left.
func TestSnapshotFaults(t *testing.T) {
	in := shared(t)
	const (
		name = "e2e-fault"
		snap = "e2e-sf"
	)
	defer func() {
		// Children of the interrupted fork, the restored VMs, the source,
		// then every snapshot taken of the source.
		var vms []api.VM
		json.Unmarshal([]byte(in.run(nil, "vm", "list", "--json").stdout), &vms)
		for _, v := range vms {
			if strings.HasPrefix(v.Name, "e2e-fk-") || v.Name == "e2e-fx" {
				in.run(nil, "vm", "delete", "--force", v.Name)
			}
		}
		in.run(nil, "vm", "delete", "--force", name)
		// Snapshots taken on top of others go first: a few passes.
		for pass := 0; pass < 4; pass++ {
			var snaps []api.Snapshot
			json.Unmarshal([]byte(in.run(nil, "vm", "snapshot", "list", "--json").stdout), &snaps)
			for _, s := range snaps {
				if s.VM == name || s.Name == snap {
					in.run(nil, "vm", "snapshot", "delete", "--force", s.Name)
				}
			}
		}
	}()

	t.Run("unknown snapshot", func(t *testing.T) {
		r := in.run(nil, "vm", "create", "e2e-fx", "--egress", "none", "--snapshot", "nosuch")
		if r.code == 0 || !strings.Contains(r.stderr, "nosuch") || !regexp.MustCompile(`(?i)no snapshot|not found`).MatchString(r.stderr) {
			t.Fatalf("vm create --snapshot nosuch: %s", r)
		}
		if in.vmRowExists(t, "e2e-fx") {
			t.Fatalf("a VM row e2e-fx stays after the refused create")
		}
	})

	vm := in.createVM(t, name)
	in.guest(t, name, "echo fault > /root/faultfile && sync")
	in.must(t, "vm", "snapshot", name, "--name", snap, "--stop")
	if st := in.vm(t, name).State; st != api.VMStopped {
		t.Fatalf("%s is %s after vm snapshot --stop", name, st)
	}
	dir := in.snapshotDir(t, snap)
	mem, state := snapshotFiles(t, dir, vm.MemoryBytes)
	t.Logf("snapshot %s: memory %s, state %s", snap, mem, state)

	// restoreFails creates a VM from the damaged snapshot and checks the
	// failure is clean.
	restoreFails := func(t *testing.T, what string) {
		t.Helper()
		vmDirs := dirSet(layoutOf(in.home).VMsDir)
		procs := pidSet(in.home)
		r := in.run(nil, "vm", "create", "e2e-fx", "--egress", "none", "--snapshot", snap)
		if r.code == 0 {
			t.Fatalf("vm create --snapshot %s with %s succeeded: %s", snap, what, r)
		}
		if !strings.Contains(r.stderr, snap) {
			t.Errorf("the error for %s does not name the snapshot %s: %s", what, snap, r)
		}
		t.Logf("%s: %s", what, strings.TrimSpace(r.stderr))
		if in.vmRowExists(t, "e2e-fx") {
			t.Errorf("%s: the failed create left a VM row (vm list)", what)
		}
		for d := range dirSet(layoutOf(in.home).VMsDir) {
			if !vmDirs[d] {
				t.Errorf("%s: the failed create left vms/%s", what, d)
			}
		}
		for p := range pidSet(in.home) {
			if !procs[p] {
				cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
				t.Errorf("%s: the failed create left process %d: %s", what, p, strings.ReplaceAll(string(cmdline), "\x00", " "))
			}
		}
		checkSnapshotDirs(t, in, what)
	}
	backup := t.TempDir()
	save := func(p string) string {
		b := backup + "/" + strings.ReplaceAll(strings.TrimPrefix(p, dir+"/"), "/", "_")
		if out, err := exec.Command("cp", "--sparse=always", "-p", p, b).CombinedOutput(); err != nil {
			t.Fatalf("back up %s: %v: %s", p, err, out)
		}
		return b
	}
	put := func(b, p string) {
		if out, err := exec.Command("cp", "--sparse=always", "-p", b, p).CombinedOutput(); err != nil {
			t.Fatalf("restore %s: %v: %s", p, err, out)
		}
	}
	memBak, stateBak := save(mem), save(state)

	t.Run("truncated memory file", func(t *testing.T) {
		if err := os.Truncate(mem, vm.MemoryBytes/2); err != nil {
			t.Fatal(err)
		}
		restoreFails(t, "a truncated memory file")
		put(memBak, mem)
	})
	t.Run("truncated state file", func(t *testing.T) {
		st, _ := os.Stat(state)
		if err := os.Truncate(state, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		restoreFails(t, "a truncated device state file")
		put(stateBak, state)
	})
	t.Run("missing disk layer", func(t *testing.T) {
		// The layers are the big files that are neither memory nor state.
		var layers []string
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			p := dir + "/" + e.Name()
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() || p == mem || p == state || st.Size() < 64<<20 {
				continue
			}
			layers = append(layers, p)
		}
		if len(layers) == 0 {
			t.Fatalf("no disk layer found in %s", dir)
		}
		hidden := layers[0] + ".hidden"
		if err := os.Rename(layers[0], hidden); err != nil {
			t.Fatal(err)
		}
		restoreFails(t, "a missing layer ("+layers[0]+")")
		if err := os.Rename(hidden, layers[0]); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("snapshot of another QEMU version", func(t *testing.T) {
		// What an upgrade of QEMU does to a snapshot: its record and its
		// metadata name another version than the one installed.
		q := "SELECT compat FROM snapshots WHERE name = '" + snap + "'"
		old := snapshotRows(t, in, q)
		if !strings.HasPrefix(old, "qemu ") {
			t.Fatalf("snapshot %s compat %q, want \"qemu <version>; ...\"", snap, old)
		}
		foreign := "qemu 0.1.0" + old[strings.Index(old+";", ";"):]
		setCompat := func(from, to string) {
			t.Helper()
			if out, err := exec.Command("sqlite3", layoutOf(in.home).DBPath,
				"UPDATE snapshots SET compat = '"+to+"' WHERE name = '"+snap+"'").CombinedOutput(); err != nil {
				t.Fatalf("sqlite3 update: %v: %s", err, out)
			}
			metas, _ := filepath.Glob(filepath.Join(dir, "*.json"))
			for _, m := range metas {
				b, err := os.ReadFile(m)
				if err == nil && strings.Contains(string(b), from) {
					os.WriteFile(m, []byte(strings.ReplaceAll(string(b), from, to)), 0o600)
				}
			}
		}
		setCompat(old, foreign)
		defer setCompat(foreign, old)
		restoreFails(t, "another QEMU version ("+foreign+")")
	})
	t.Run("the repaired snapshot restores", func(t *testing.T) {
		in.createVM(t, "e2e-fx", "--snapshot", snap)
		if got := in.guest(t, "e2e-fx", "cat /root/faultfile"); got != "fault" {
			t.Fatalf("/root/faultfile in the restored VM: %q", got)
		}
		in.must(t, "vm", "delete", "--force", "e2e-fx")
	})

	t.Run("daemon SIGKILL during save", func(t *testing.T) {
		if st := in.vm(t, name).State; st != api.VMRunning {
			in.must(t, "vm", "start", name)
		}
		label := "kill during save"
		p := in.startCLI(t, "vm", "snapshot", name, "--name", "e2e-sk")
		waitStage(t, p, "save", 5*time.Minute)
		in.killDaemon()
		p.wait(t, time.Minute)
		in.startDaemon()
		t.Logf("%s: CLI %s; restart: %s", label, p, lastSweep(in))
		checkNoSavingRows(t, in, label)
		vmUsable(t, in, name, "fault")
		checkSnapshotDirs(t, in, label)
		checkNothingOrphaned(t, in, label)
		for _, s := range in.snapshotList(t) {
			if s.Name == "e2e-sk" {
				// It was finished rather than dropped: then it must work.
				t.Logf("%s: the snapshot survived the kill: %+v", label, s)
			}
		}
	})

	t.Run("daemon SIGKILL during restore", func(t *testing.T) {
		label := "kill during restore"
		p := in.startCLI(t, "vm", "create", "e2e-fx", "--egress", "none", "--snapshot", snap)
		waitStage(t, p, "restore", 5*time.Minute)
		in.killDaemon()
		p.wait(t, time.Minute)
		in.startDaemon()
		t.Logf("%s: CLI %s; restart: %s", label, p, lastSweep(in))
		checkSnapshotDirs(t, in, label)
		checkNothingOrphaned(t, in, label)
		// The snapshot is still good.
		in.run(nil, "vm", "delete", "--force", "e2e-fx")
		in.createVM(t, "e2e-fx", "--snapshot", snap)
		if got := in.guest(t, "e2e-fx", "cat /root/faultfile"); got != "fault" {
			t.Fatalf("restore after the kill: %q", got)
		}
		in.must(t, "vm", "delete", "--force", "e2e-fx")
	})

	t.Run("daemon SIGKILL during fork", func(t *testing.T) {
		label := "kill during fork"
		if st := in.vm(t, name).State; st != api.VMRunning {
			in.must(t, "vm", "start", name)
		}
		p := in.startCLI(t, "vm", "fork", name, "--count", "2", "--prefix", "e2e-fk")
		// The parent's own restore comes first; kill at the first child's.
		waitStage(t, p, "e2e-fk-1: restore", 5*time.Minute)
		in.killDaemon()
		p.wait(t, time.Minute)
		in.startDaemon()
		t.Logf("%s: CLI %s; restart: %s", label, p, lastSweep(in))
		checkNoSavingRows(t, in, label)
		vmUsable(t, in, name, "fault")
		checkSnapshotDirs(t, in, label)
		checkNothingOrphaned(t, in, label)
		// A child that survived is a whole VM.
		var vms []api.VM
		json.Unmarshal([]byte(in.must(t, "vm", "list", "--json").stdout), &vms)
		for _, v := range vms {
			if strings.HasPrefix(v.Name, "e2e-fk-") {
				t.Logf("%s: child %s survived (%s)", label, v.Name, v.State)
				if v.State == api.VMStopped {
					in.must(t, "vm", "start", v.Name)
				}
				if got := in.guest(t, v.Name, "hostname; cat /root/faultfile"); got != v.Name+"\nfault" {
					t.Errorf("%s: surviving child %s: %q", label, v.Name, got)
				}
			}
		}
	})
}

// waitStage waits until the CLI prints that stage as running ("  …
// NAME", its live progress on stderr).
func waitStage(t testing.TB, p *cliProc, stage string, timeout time.Duration) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*… ` + regexp.QuoteMeta(stage) + `\b`)
	deadline := time.Now().Add(timeout)
	for !re.MatchString(p.stderr.String()) {
		select {
		case <-p.done:
			t.Fatalf("finished (exit %d) before stage %q began: %s", p.code, stage, p)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("stage %q did not begin within %s: %s", stage, timeout, p)
		}
	}
}

// checkNoSavingRows: no snapshot row is left half-written.
func checkNoSavingRows(t testing.TB, in *instance, label string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows := snapshotRows(t, in, "SELECT name, state FROM snapshots WHERE state <> 'ready'")
		if rows == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: snapshot rows not ready 30s after the restart: %s", label, rows)
			return
		}
		time.Sleep(time.Second)
	}
}

// vmUsable: after a crash the VM is running or stopped; a stopped one
// starts; either way exec works and its file is there.
func vmUsable(t testing.TB, in *instance, name, want string) {
	t.Helper()
	v := in.vm(t, name)
	t.Logf("after the restart %s is %s (pid %d, last error %q)", name, v.State, v.PID, v.LastError)
	switch v.State {
	case api.VMRunning:
	case api.VMStopped:
		in.must(t, "vm", "start", name)
	default:
		t.Fatalf("%s is %q after the daemon restart (last error %q)", name, v.State, v.LastError)
	}
	if got := in.guest(t, name, "cat /root/faultfile"); got != want {
		t.Fatalf("%s's /root/faultfile: %q", name, got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestIdlePark: with `[vm] idle_park` set, a ready VM that nobody uses is
// parked by the daemon on its own (under TCG an idle guest still costs
// some CPU: the idle test must see past that), and the next exec wakes
// it.
func TestIdlePark(t *testing.T) {
	requireVM(t)
	authHome := t.TempDir()
	in := newInstance(t, fmt.Sprintf("[vm]\nboot_timeout = \"100s\"\nidle_park = \"20s\"\n[auth]\nhome = %q\n", authHome))
	defer in.shutdown()
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	const name = "e2e-idle"
	vm := in.createVM(t, name)
	in.guest(t, name, "echo idle > /root/idlefile && sync")
	t0 := time.Now()
	for {
		v := in.vm(t, name)
		if v.State == api.VMParked {
			break
		}
		if v.State != api.VMRunning {
			t.Fatalf("%s went %q while idle (last error %q)", name, v.State, v.LastError)
		}
		if time.Since(t0) > 4*time.Minute {
			t.Fatalf("%s idle for %s with idle_park = 20s and still %s (cpu %.1f%%)\ndaemon log:\n%s", name, time.Since(t0).Round(time.Second), v.State, v.CPUPercent, in.daemonLog())
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("parked after %s idle", time.Since(t0).Round(time.Second))
	if pids := vmProcesses(in.home, vm.ID); len(pids) != 0 {
		t.Fatalf("idle-parked VM still has processes %v", pids)
	}
	if got := in.guest(t, name, "cat /root/idlefile"); got != "idle" {
		t.Fatalf("exec on the idle-parked VM: %q", got)
	}
	if st := in.vm(t, name).State; st != api.VMRunning {
		t.Fatalf("after exec woke it: %s", st)
	}
}
