package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// TestVMLifecycle drives one VM through everything a user does with it:
// create, list, exec, ssh, stop, start, a daemon SIGKILL and restart while
// it runs, and delete. One VM serves all steps (boots are the slow part).
func TestVMLifecycle(t *testing.T) {
	in := shared(t)
	const name = "e2e-main"
	t0 := time.Now()
	vm := in.createVM(t, name)
	t.Logf("created %s in %s", name, time.Since(t0).Round(time.Millisecond))
	if vm.Name != name || vm.State != api.VMRunning {
		t.Fatalf("created VM = %+v, want %s running", vm, name)
	}
	// auto never picks Firecracker for a user-networking VM.
	if vm.VMM != "qemu" {
		t.Fatalf("created VM runs under %q, want qemu", vm.VMM)
	}
	if vm.SSHPort == 0 || vm.CPUs != 2 || vm.MemoryBytes != 1024<<20 || vm.WorkDiskBytes != 4<<30 || vm.Egress != "none" {
		t.Fatalf("created VM has unexpected settings: %+v", vm)
	}

	t.Run("list", func(t *testing.T) {
		var vms []api.VM
		r := in.must(t, "vm", "list", "--json")
		if err := json.Unmarshal([]byte(r.stdout), &vms); err != nil {
			t.Fatal(err)
		}
		// Other tests' VMs may be listed too: look for this one.
		found := false
		for _, v := range vms {
			found = found || v.Name == name && v.State == "running"
		}
		if !found {
			t.Fatalf("vm list lacks %s running: %s", name, r.stdout)
		}
		if !strings.Contains(r.stdout, `"created_at"`) || !strings.Contains(r.stdout, `"memory_bytes"`) {
			t.Fatalf("vm list JSON lacks snake_case fields: %s", r.stdout)
		}
		plain := in.must(t, "vm", "list")
		if !strings.Contains(plain.stdout, name) || !strings.Contains(plain.stdout, "running") {
			t.Fatalf("vm list table: %s", plain.stdout)
		}
	})

	t.Run("exec status and streams", func(t *testing.T) {
		r := in.run(nil, "vm", "exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
		if r.code != 3 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Fatalf("exec: %s", r)
		}
		r = in.run(nil, "vm", "exec", name, "--", "hostname")
		if r.code != 0 || strings.TrimSpace(r.stdout) != name {
			t.Fatalf("guest hostname: %s", r)
		}
		r = in.run(nil, "vm", "exec", name, "--", "findmnt", "-no", "SOURCE,FSTYPE", "/root")
		if r.code != 0 || !strings.Contains(r.stdout, "ext4") {
			t.Fatalf("/root is not the work disk: %s", r)
		}
	})

	t.Run("exec stdin", func(t *testing.T) {
		in1 := strings.NewReader("hello from the host\nline two\n")
		r := in.run(in1, "vm", "exec", name, "--", "sh", "-c", "cat; echo done")
		if r.code != 0 || r.stdout != "hello from the host\nline two\ndone\n" {
			t.Fatalf("exec stdin: %s", r)
		}
	})

	t.Run("exec not found and not executable", func(t *testing.T) {
		if r := in.run(nil, "vm", "exec", name, "--", "no-such-command-xyz"); r.code != 127 {
			t.Fatalf("not found: want 127, got %s", r)
		}
		if r := in.run(nil, "vm", "exec", name, "--", "/etc/hostname"); r.code != 126 {
			t.Fatalf("not executable: want 126, got %s", r)
		}
		if r := in.run(nil, "vm", "exec", name, "--", "sh", "-c", "kill -TERM $$"); r.code != 128+15 {
			t.Fatalf("signal: want 143, got %s", r)
		}
	})

	t.Run("exec tty", func(t *testing.T) {
		r := in.run(nil, "vm", "exec", "-t", name, "--", "tty")
		if r.code != 0 || !strings.Contains(r.stdout, "/dev/pts/") {
			t.Fatalf("exec -t: %s", r)
		}
	})

	t.Run("egress none blocks the host", func(t *testing.T) {
		// A host service on 127.0.0.1: under QEMU user networking without
		// restrict=on the guest would reach it as 10.0.2.2.
		port, accepted := hostListener(t)
		probe := func(addr string) result {
			return in.run(nil, "vm", "exec", name, "--", "timeout", "8", "bash", "-c", "echo > /dev/tcp/"+addr)
		}
		// The probe itself works: the guest's own sshd answers.
		if r := probe("127.0.0.1/22"); r.code != 0 {
			t.Fatalf("probe of the guest's own sshd failed, so the probe proves nothing: %s", r)
		}
		for _, addr := range []string{fmt.Sprintf("10.0.2.2/%d", port), "10.0.2.2/22", "10.0.2.3/53"} {
			if r := probe(addr); r.code == 0 {
				t.Errorf("guest connected to %s with --egress none: %s", addr, r)
			}
		}
		if n := accepted.Load(); n != 0 {
			t.Errorf("the host listener on 127.0.0.1:%d accepted %d connection(s) from the guest", port, n)
		}
	})

	t.Run("ssh", func(t *testing.T) {
		r := in.run(nil, "vm", "ssh", name, "--", "true")
		if r.code != 0 {
			t.Fatalf("vm ssh -- true: %s", r)
		}
		r = in.run(nil, "vm", "ssh", name, "--", "sh", "-c", "'exit 7'")
		if r.code != 7 {
			t.Fatalf("vm ssh exit status: %s", r)
		}
		// An interactive session (here: a shell reading a pipe) ends with a
		// reminder of how to stop and delete the VM.
		r = in.run(strings.NewReader("echo from-the-shell\n"), "vm", "ssh", name)
		if r.code != 0 || !strings.Contains(r.stdout, "from-the-shell") || !strings.Contains(r.stderr, "banger vm stop "+name) || !strings.Contains(r.stderr, "banger vm delete "+name) {
			t.Fatalf("interactive vm ssh: %s", r)
		}
		// The host key is pinned: a known_hosts with another key fails.
		kh := filepath.Join(vm.Dir, "known_hosts")
		orig, err := os.ReadFile(kh)
		if err != nil {
			t.Fatal(err)
		}
		fields := strings.Fields(string(orig))
		bad := fields[0] + " ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDS1ZW7vzCgnmYvCvn9o5yQ8/ElJ7wEiKhBoO/HVOhTs\n"
		os.WriteFile(kh, []byte(bad), 0o600)
		r = in.run(nil, "vm", "ssh", name, "--", "true")
		os.WriteFile(kh, orig, 0o600)
		if r.code == 0 {
			t.Fatalf("ssh accepted a host key that is not the pinned one: %s", r)
		}
	})

	t.Run("version health logs", func(t *testing.T) {
		r := in.must(t, "version", "--json")
		var v map[string]any
		json.Unmarshal([]byte(r.stdout), &v)
		agents, _ := v["agents"].(map[string]any)
		if v["daemon"] == nil || agents[name] == nil {
			t.Fatalf("version lacks daemon or agent version: %s", r.stdout)
		}
		in.must(t, "vm", "health", name)
		logs := in.must(t, "vm", "logs", name)
		// The daemon's console pump connects after QEMU started; what
		// the kernel prints in its first seconds (with "quiet", only
		// errors) is there all the same, and so is getty's prompt.
		if !regexp.MustCompile(`\[\s+[0-4]\.\d{6}\] `).MatchString(logs.stdout) || !strings.Contains(logs.stdout, "login:") {
			t.Fatalf("console log lacks early kernel lines or the login prompt: %.300q", logs.stdout)
		}
	})

	t.Run("console log is capped and keeps the newest lines", func(t *testing.T) {
		// The guest prints ~2.5 MB to its serial console, 1 MiB cap.
		in.must(t, "vm", "exec", name, "--", "sh", "-c",
			`i=0; while [ $i -lt 25000 ]; do echo "flood line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; i=$((i+1)); done > /dev/ttyS0; echo FLOOD-END > /dev/ttyS0`)
		waitConsole(t, in, name, "FLOOD-END")
		for _, f := range []string{"console.log", "console.log.1"} {
			st, err := os.Stat(filepath.Join(vm.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() > 1<<20 {
				t.Fatalf("%s is %d bytes, cap 1 MiB", f, st.Size())
			}
		}
		logs := in.must(t, "vm", "logs", name).stdout
		if len(logs) > 2<<20 || !strings.Contains(logs, "flood line 24999") {
			t.Fatalf("vm logs: %d bytes, newest flood line missing", len(logs))
		}
	})

	t.Run("stop and start", func(t *testing.T) {
		// Something on the work disk must survive a stop/start.
		in.must(t, "vm", "exec", name, "--", "sh", "-c", "echo kept > /root/marker")
		r := in.must(t, "vm", "stop", name, "--json")
		var stopped api.VM
		json.Unmarshal([]byte(r.stdout), &stopped)
		if stopped.State != "stopped" {
			t.Fatalf("after stop: %s", r.stdout)
		}
		if pids := vmProcesses(in.home, vm.ID); len(pids) != 0 {
			t.Fatalf("VMM still running after stop: %v", pids)
		}
		if r := in.run(nil, "vm", "exec", name, "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "stopped") {
			t.Fatalf("exec on a stopped VM: %s", r)
		}
		in.must(t, "vm", "start", name)
		r = in.must(t, "vm", "exec", name, "--", "cat", "/root/marker")
		if r.stdout != "kept\n" {
			t.Fatalf("work disk lost data across stop/start: %s", r)
		}
	})

	t.Run("daemon SIGKILL and restart re-adopts the VM", func(t *testing.T) {
		before := in.vm(t, name)
		bootID := in.must(t, "vm", "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
		in.killDaemon()
		in.startDaemon()
		after := in.vm(t, name)
		if after.State != "running" || after.PID != before.PID {
			t.Fatalf("after daemon restart: %+v (before pid %d)", after, before.PID)
		}
		r := in.must(t, "vm", "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id")
		if r.stdout != bootID {
			t.Fatalf("guest rebooted across daemon restart: %q vs %q", r.stdout, bootID)
		}
		// The new daemon reads the console again.
		in.must(t, "vm", "exec", name, "--", "sh", "-c", "echo CONSOLE-AFTER-RESTART > /dev/ttyS0")
		waitConsole(t, in, name, "CONSOLE-AFTER-RESTART")
		// And once more, so the agent's reconnect is not a one-off.
		in.stopDaemon()
		in.startDaemon()
		if r := in.run(nil, "vm", "exec", name, "--", "true"); r.code != 0 {
			t.Fatalf("exec after second restart: %s", r)
		}
	})

	t.Run("a VMM that died while the daemon was down is marked stopped", func(t *testing.T) {
		pid := in.vm(t, name).PID
		in.stopDaemon()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		in.startDaemon()
		if vm := in.vm(t, name); vm.State != "stopped" {
			t.Fatalf("after its VMM died: %+v", vm)
		}
	})

	t.Run("restart", func(t *testing.T) {
		// Restart boots a stopped VM as well; its work disk is intact.
		in.must(t, "vm", "restart", name)
		if r := in.must(t, "vm", "exec", name, "--", "cat", "/root/marker"); r.stdout != "kept\n" {
			t.Fatalf("work disk after restart: %s", r)
		}
		before := in.must(t, "vm", "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
		in.must(t, "vm", "restart", name)
		after := in.must(t, "vm", "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
		if before == after {
			t.Fatalf("restart did not reboot the guest")
		}
	})

	t.Run("delete", func(t *testing.T) {
		in.must(t, "vm", "delete", name)
		if r := in.run(nil, "vm", "show", name); r.code != 1 || !strings.Contains(r.stderr, "no VM named") {
			t.Fatalf("show after delete: %s", r)
		}
		if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
			t.Fatalf("VM dir %s left behind", vm.Dir)
		}
		if pids := vmProcesses(in.home, vm.ID); len(pids) != 0 {
			t.Fatalf("VMM still running after delete: %v", pids)
		}
	})
}

// waitConsole waits until `vm logs` shows marker.
func waitConsole(t *testing.T, in *instance, name, marker string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if strings.Contains(in.must(t, "vm", "logs", name).stdout, marker) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q", marker)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
