package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/client"
)

// Helpers of the snapshot, fork and park tests and of BenchmarkSnapshot.
// Everything goes through the CLI (or, for plain ssh, OpenSSH itself);
// host-side facts (processes, files) are read from /proc and the
// instance's directories.

// snapshotsDirName is where the daemon keeps snapshots under its data
// directory (SNAPSHOT.md: <data>/snapshots/<id>/).
const snapshotsDirName = "snapshots"

// snapshotShow is `vm snapshot show NAME --json`, parsed both into the
// public view and into a map, so a field the view does not declare (the
// directory) is still seen.
func (in *instance) snapshotShow(t testing.TB, name string) (api.Snapshot, map[string]any) {
	t.Helper()
	r := in.must(t, "vm", "snapshot", "show", name, "--json")
	var s api.Snapshot
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("parse vm snapshot show %s: %v\n%s", name, err, r.stdout)
	}
	json.Unmarshal([]byte(r.stdout), &raw)
	if s.Name != name {
		t.Fatalf("vm snapshot show %s answered %q: %s", name, s.Name, r.stdout)
	}
	return s, raw
}

func (in *instance) snapshotList(t testing.TB) []api.Snapshot {
	t.Helper()
	r := in.must(t, "vm", "snapshot", "list", "--json")
	var ss []api.Snapshot
	if err := json.Unmarshal([]byte(r.stdout), &ss); err != nil {
		t.Fatalf("parse vm snapshot list: %v\n%s", err, r.stdout)
	}
	return ss
}

// snapshotDir is a snapshot's directory: the "dir" of `vm snapshot show
// --json` when the view has one, else <data>/snapshots/<id>. It must
// exist.
func (in *instance) snapshotDir(t testing.TB, name string) string {
	t.Helper()
	s, raw := in.snapshotShow(t, name)
	dir, _ := raw["dir"].(string)
	if dir == "" {
		dir = filepath.Join(layoutOf(in.home).DataDir, snapshotsDirName, s.ID)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Fatalf("snapshot %s (id %s): no directory at %s: %v", name, s.ID, dir, err)
	}
	return dir
}

// checkSnapshotDirs finds no directory under <data>/snapshots that no
// listed snapshot owns.
func checkSnapshotDirs(t testing.TB, in *instance, label string) {
	t.Helper()
	owned := map[string]bool{}
	for _, s := range in.snapshotList(t) {
		owned[s.ID] = true
	}
	entries, _ := os.ReadDir(filepath.Join(layoutOf(in.home).DataDir, snapshotsDirName))
	for _, e := range entries {
		if !owned[e.Name()] {
			t.Errorf("%s: snapshots/%s belongs to no snapshot", label, e.Name())
		}
	}
}

// snapshotRows runs a read-only query on the daemon's database with the
// sqlite3 shell (rows the API may not show, such as a snapshot still
// saving).
func snapshotRows(t testing.TB, in *instance, query string) string {
	t.Helper()
	out, err := exec.Command("sqlite3", "-readonly", layoutOf(in.home).DBPath, query).CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3 %q: %v: %s", query, err, out)
	}
	return strings.TrimSpace(string(out))
}

// snapshotFiles picks the memory file (apparent size = the guest's RAM)
// and the device state file (starts with QEMU's migration magic "QEVM")
// out of a snapshot directory, without knowing the driver's file names.
func snapshotFiles(t testing.TB, dir string, memBytes int64) (mem, state string) {
	t.Helper()
	var names []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		st, _ := d.Info()
		names = append(names, fmt.Sprintf("%s (%d bytes)", p, st.Size()))
		if st.Size() == memBytes && mem == "" {
			mem = p
		}
		f, err := os.Open(p)
		if err == nil {
			magic := make([]byte, 4)
			if n, _ := io.ReadFull(f, magic); n == 4 && string(magic) == "QEVM" && state == "" {
				state = p
			}
			f.Close()
		}
		return nil
	})
	if mem == "" || state == "" {
		t.Fatalf("snapshot dir %s: memory file (%d bytes) %q, state file (QEVM) %q among:\n%s", dir, memBytes, mem, state, strings.Join(names, "\n"))
	}
	return mem, state
}

// guest runs a shell script in the VM through `vm exec` and returns its
// trimmed stdout; it must exit 0 within two minutes (a VM that hangs
// fails the test rather than the suite's timeout).
func (in *instance) guest(t testing.TB, vm, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := in.runCtx(ctx, nil, "vm", "exec", vm, "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("vm exec %s -- sh -c %q: %s", vm, script, r)
	}
	return strings.TrimSpace(r.stdout)
}

// exists reports whether a path exists in the guest.
func (in *instance) exists(t testing.TB, vm, path string) bool {
	t.Helper()
	return in.guest(t, vm, "if [ -e '"+path+"' ]; then echo yes; else echo no; fi") == "yes"
}

// tickScript prints "tick N" once a second, N counting from 0: output
// that advances, so a test sees a session both continue and keep going.
const tickScript = `i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 1; done`

var tickLine = regexp.MustCompile(`tick (\d+)\s*$`)

// tickCount is the newest count in a tick session's log.
func (in *instance) tickCount(t testing.TB, vm, session string) int {
	t.Helper()
	r := in.must(t, "vm", "session", "logs", vm, session, "--tail", "1")
	m := tickLine.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("session %s in %s: no tick in its log: %s", session, vm, r)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitTickPast waits until the tick session's count exceeds n.
func (in *instance) waitTickPast(t testing.TB, vm, session string, n int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := in.tickCount(t, vm, session)
		if c > n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s in %s stuck at tick %d (waited %s for more than %d)", session, vm, c, timeout, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkTickHistory checks that a tick session's whole log counts from 0
// without a gap up to at least n: the session continued, it did not
// start again.
func (in *instance) checkTickHistory(t testing.TB, vm, session string, n int) {
	t.Helper()
	r := in.must(t, "vm", "session", "logs", vm, session)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) < n+1 {
		t.Fatalf("session %s in %s: %d log lines, want at least %d (ticks 0..%d): %.300s", session, vm, len(lines), n+1, n, r.stdout)
	}
	for i := 0; i <= n; i++ {
		if lines[i] != fmt.Sprintf("tick %d", i) {
			t.Fatalf("session %s in %s: log line %d is %q, want %q (the session did not continue from where it was)", session, vm, i, lines[i], fmt.Sprintf("tick %d", i))
		}
	}
}

// sessionState is the state of the named session in the VM's `vm session
// list`, "" when it is not listed.
func (in *instance) sessionState(t testing.TB, vm, name string) string {
	t.Helper()
	for _, s := range in.sessions(t, vm) {
		if s.Name == name {
			return s.State
		}
	}
	return ""
}

// pinnedKey is the host key pinned for a VM: its known_hosts line
// without the host field.
func pinnedKey(t testing.TB, vm api.VM) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.Dir, "known_hosts"))
	if err != nil {
		t.Fatalf("known_hosts of %s: %v", vm.Name, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		t.Fatalf("known_hosts of %s: %q", vm.Name, b)
	}
	return f[1] + " " + f[2]
}

// plainSSH runs OpenSSH itself (no banger on the path) with the VM's
// connection details and the given known_hosts file, host key checking
// strict, and returns its result.
func plainSSH(t testing.TB, in *instance, vm, knownHosts string, command ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := client.New(in.socket()).SSHInfo(ctx, vm)
	if err != nil {
		t.Fatalf("ssh info of %s: %v", vm, err)
	}
	if knownHosts == "" {
		knownHosts = info.KnownHostsFile
	}
	argv := []string{"-F", "/dev/null", "-i", info.IdentityFile, "-p", strconv.Itoa(info.Port),
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	if info.HostKeyAlias != "" {
		argv = append(argv, "-o", "HostKeyAlias="+info.HostKeyAlias)
	}
	argv = append(argv, info.User+"@"+info.Host)
	argv = append(argv, command...)
	cmd := exec.CommandContext(ctx, "ssh", argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// knownHostsWith writes a known_hosts that pins key for vm's host key
// alias: ssh with it must fail when the VM serves another key.
func knownHostsWith(t testing.TB, in *instance, vm, key string) string {
	t.Helper()
	info, err := client.New(in.socket()).SSHInfo(context.Background(), vm)
	if err != nil {
		t.Fatal(err)
	}
	host := info.HostKeyAlias
	if host == "" {
		host = fmt.Sprintf("[%s]:%d", info.Host, info.Port)
	}
	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(p, []byte(host+" "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkGuestClock checks the guest's wall clock against the host's: it
// must fall between the host's clock before and after the exec, give or
// take slack.
func checkGuestClock(t testing.TB, in *instance, vm string, slack time.Duration) {
	t.Helper()
	before := time.Now()
	out := in.guest(t, vm, "date +%s.%N")
	after := time.Now()
	secs, err := strconv.ParseFloat(out, 64)
	if err != nil {
		t.Fatalf("guest date of %s: %q", vm, out)
	}
	g := time.Unix(0, int64(secs*1e9))
	if g.Before(before.Add(-slack)) || g.After(after.Add(slack)) {
		t.Errorf("guest clock of %s is %s, host's was %s..%s (off by %s; slack %s)", vm, g.Format(time.RFC3339Nano),
			before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano), g.Sub(before).Round(time.Millisecond), slack)
	}
}

// vmRowExists reports whether `vm list` has a VM of that name.
func (in *instance) vmRowExists(t testing.TB, name string) bool {
	t.Helper()
	var vms []api.VM
	r := in.must(t, "vm", "list", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &vms); err != nil {
		t.Fatalf("parse vm list: %v\n%s", err, r.stdout)
	}
	for _, v := range vms {
		if v.Name == name {
			return true
		}
	}
	return false
}

// dirSet is a directory's entries as a set.
func dirSet(dir string) map[string]bool {
	out := map[string]bool{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		out[e.Name()] = true
	}
	return out
}

// pidSet is the instance's processes as a set.
func pidSet(home string) map[int]bool {
	out := map[int]bool{}
	for _, p := range instanceProcesses(home) {
		out[p] = true
	}
	return out
}

// procMem reads a process's resident and proportional set size
// (/proc/PID/smaps_rollup), in bytes.
func procMem(pid int) (rss, pss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			rss = kb << 10
		case "Pss:":
			pss = kb << 10
		}
	}
	return rss, pss, nil
}

// procCPU is a process's user+system CPU time (/proc/PID/stat).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command (which may hold spaces) start after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// guestUsedBytes is the "used" column of the guest's `free -b`.
func (in *instance) guestUsedBytes(t testing.TB, vm string) int64 {
	t.Helper()
	out := in.guest(t, vm, "free -b")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "Mem:" {
			n, err := strconv.ParseInt(f[2], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	t.Fatalf("free -b in %s: %q", vm, out)
	return 0
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// lastOpStages is the newest operation of that kind as a line per stage
// with its duration, for the test log (a --json CLI prints no stages).
func (in *instance) lastOpStages(t testing.TB, kind string) string {
	t.Helper()
	var ops []api.Operation
	if err := json.Unmarshal([]byte(in.must(t, "op", "list", "--json").stdout), &ops); err != nil {
		t.Fatalf("parse op list: %v", err)
	}
	var newest *api.Operation
	for i := range ops {
		if ops[i].Kind == kind && (newest == nil || ops[i].CreatedAt.After(newest.CreatedAt)) {
			newest = &ops[i]
		}
	}
	if newest == nil {
		return "(no " + kind + " operation)"
	}
	var op api.Operation
	if err := json.Unmarshal([]byte(in.must(t, "op", "show", newest.ID, "--json").stdout), &op); err != nil {
		t.Fatalf("parse op show: %v", err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %s %s:", op.Kind, op.Target, op.State)
	for _, s := range op.Stages {
		d := "running"
		if s.FinishedAt != nil {
			d = s.FinishedAt.Sub(s.StartedAt).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(&sb, "\n  %-28s %s %s", s.Name, d, s.Error)
	}
	return sb.String()
}
