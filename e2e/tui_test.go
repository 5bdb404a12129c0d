package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// tmux drives one private tmux server (its own socket, so it never meets
// a user's tmux) holding the dashboard in an 80x24 pane.
type tmux struct {
	t      *testing.T
	socket string
	sess   string
}

func (x tmux) run(args ...string) (string, error) {
	cmd := exec.Command("tmux", append([]string{"-L", x.socket}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (x tmux) capture() string {
	out, err := x.run("capture-pane", "-p", "-t", x.sess)
	if err != nil {
		x.t.Fatalf("tmux capture-pane: %v: %s", err, out)
	}
	return out
}

func (x tmux) send(keys ...string) {
	if out, err := x.run(append([]string{"send-keys", "-t", x.sess}, keys...)...); err != nil {
		x.t.Fatalf("tmux send-keys %v: %v: %s", keys, err, out)
	}
}

// waitFor polls the pane until ok accepts it or the deadline passes.
func (x tmux) waitFor(what string, within time.Duration, ok func(screen string) bool) string {
	x.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := x.capture()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("dashboard did not show %s within %s; screen:\n%s", what, within, s)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// vmLine is the VM table line of name on the screen.
func vmLine(screen, name string) string {
	for _, l := range strings.Split(screen, "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), ">"))
		if len(f) >= 2 && f[0] == name {
			return l
		}
	}
	return ""
}

// TestTUIStopsVM runs `banger tui` in a detached 80x24 tmux pane against
// a real daemon with a real VM: the VM shows up running, x stops it and
// the dashboard shows it stopped (from the event stream) without any key
// to refresh. `banger events --json --vm` sees the same stop.
func TestTUIStopsVM(t *testing.T) {
	in := shared(t)
	const name = "e2e-tui"
	in.createVM(t, name)
	t.Cleanup(func() { in.run(nil, "vm", "delete", "--force", name) })

	// An orchestrator's view of the same change.
	evCtx, evCancel := context.WithCancel(context.Background())
	defer evCancel()
	evCmd := exec.CommandContext(evCtx, bangerBin, "events", "--json", "--vm", name)
	evCmd.Env = in.env()
	evOut, err := evCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := evCmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []api.BusEvent
	go func() {
		sc := bufio.NewScanner(evOut)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var ev api.BusEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				mu.Lock()
				events = append(events, ev)
				mu.Unlock()
			}
		}
	}()
	defer func() { evCancel(); _ = evCmd.Wait() }()

	x := tmux{t: t, socket: fmt.Sprintf("banger-e2e-%d", os.Getpid()), sess: "tui"}
	start := exec.Command("tmux", "-L", x.socket, "new-session", "-d", "-x", "80", "-y", "24", "-s", x.sess,
		"env", "BANGER_HOME="+in.home, bangerBin, "tui")
	start.Env = append(in.env(), "TERM=xterm-256color")
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = x.run("kill-server") })

	screen := x.waitFor(name+" running", 60*time.Second, func(s string) bool {
		return strings.Contains(vmLine(s, name), api.VMRunning)
	})
	t.Logf("dashboard:\n%s", screen)
	lines := strings.Split(strings.TrimRight(screen, "\n"), "\n")
	if len(lines) > 24 {
		t.Errorf("%d lines in a 24-line pane", len(lines))
	}
	for _, l := range lines {
		if n := len([]rune(l)); n > 80 {
			t.Errorf("line of %d columns in an 80-column pane: %q", n, l)
		}
	}
	// The live figures come from the daemon's /proc sampling of QEMU.
	if l := vmLine(screen, name); !strings.Contains(l, "M ") && !strings.Contains(l, "G ") {
		t.Errorf("no RSS figure on the VM line: %q", l)
	}

	// Select the VM by filtering on its name (the shared instance may
	// hold others), then stop it.
	x.send("/")
	x.send("-l", name)
	x.send("Enter")
	x.waitFor("the filter", 10*time.Second, func(s string) bool {
		return strings.Contains(s, fmt.Sprintf("filter %q", name)) && strings.HasPrefix(strings.TrimSpace(vmLine(s, name)), ">")
	})

	// s hands the terminal to ssh; exiting the shell brings the dashboard
	// back with the still-running reminder and the agent's health.
	x.send("s")
	x.waitFor("a shell prompt over ssh", 60*time.Second, func(s string) bool {
		return strings.Contains(s, "root@"+name)
	})
	x.send("-l", "echo tui-ssh-$((6*7))")
	x.send("Enter")
	x.waitFor("the command's output over ssh", 30*time.Second, func(s string) bool {
		return strings.Contains(s, "tui-ssh-42")
	})
	x.send("-l", "exit")
	x.send("Enter")
	screen = x.waitFor("the still-running reminder", 60*time.Second, func(s string) bool {
		return strings.Contains(s, "is still running") && strings.Contains(s, "agent: ok")
	})
	t.Logf("after ssh:\n%s", screen)

	// a attaches the live session; Ctrl-P Ctrl-Q detaches back.
	in.must(t, "vm", "session", "start", name, "--name", "ticker", "--pty", "--", "sh", "-c", "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 1; done")
	x.waitFor("the session in the dashboard", 60*time.Second, func(s string) bool {
		return strings.Contains(s, "ticker") && strings.Contains(s, "running")
	})
	x.send("a")
	x.waitFor("the session's output on the terminal", 60*time.Second, func(s string) bool {
		return strings.Contains(s, "tick-") && !strings.Contains(s, "c:create")
	})
	x.send("C-p")
	x.send("C-q")
	screen = x.waitFor("the dashboard after a detach", 60*time.Second, func(s string) bool {
		return strings.Contains(s, "back from session ticker") && strings.Contains(s, "c:create")
	})
	t.Logf("after attach:\n%s", screen)

	x.send("x")
	screen = x.waitFor(name+" stopped", 3*time.Minute, func(s string) bool {
		return strings.Contains(vmLine(s, name), api.VMStopped)
	})
	t.Logf("after x:\n%s", screen)
	if vm := in.vm(t, name); vm.State != api.VMStopped {
		t.Fatalf("daemon says %s is %s after x", name, vm.State)
	}

	// The event stream carried the stop.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		var states []string
		for _, ev := range events {
			if ev.Kind == api.EventVM && ev.VMInfo != nil {
				states = append(states, ev.VMInfo.State)
			}
		}
		mu.Unlock()
		if len(states) > 0 && states[len(states)-1] == api.VMStopped {
			t.Logf("banger events saw: %v", states)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("banger events --json --vm %s saw VM states %v, want a stop", name, states)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// q quits cleanly: the pane's program ends, so the session goes.
	x.send("q")
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := x.run("has-session", "-t", x.sess); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard still running 10s after q:\n%s", x.capture())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestTUIDaemonDown starts the dashboard before its daemon: it says the
// daemon is not reachable, finds it by itself once it listens, and says
// so again when it goes away.
func TestTUIDaemonDown(t *testing.T) {
	requireVM(t)
	home, err := os.MkdirTemp("/tmp", "bge")
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{t: t, home: home}
	t.Cleanup(func() { os.RemoveAll(home) })

	x := tmux{t: t, socket: fmt.Sprintf("banger-e2e-down-%d", os.Getpid()), sess: "tui"}
	start := exec.Command("tmux", "-L", x.socket, "new-session", "-d", "-x", "80", "-y", "24", "-s", x.sess,
		"env", "BANGER_HOME="+home, bangerBin, "tui")
	start.Env = append(in.env(), "TERM=xterm-256color")
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = x.run("kill-server") })

	x.waitFor("the daemon-down message", 20*time.Second, func(s string) bool {
		return strings.Contains(s, "not reachable") && strings.Contains(s, "Retrying automatically")
	})
	in.startDaemon()
	screen := x.waitFor("the dashboard once the daemon listens", 60*time.Second, func(s string) bool {
		return strings.Contains(s, "no VMs yet") && strings.Contains(s, "daemon is back")
	})
	t.Logf("daemon up:\n%s", screen)
	in.stopDaemon()
	x.waitFor("the daemon-down message again", 20*time.Second, func(s string) bool {
		return strings.Contains(s, "not reachable")
	})
	x.send("q")
}
