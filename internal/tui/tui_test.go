package tui

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/charmbracelet/bubbles/spinner"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/muesli/termenv"

	"github.com/bangerdev/banger/api"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) {
	// Plain text: goldens without escape codes, the same on every terminal.
	lipgloss.SetColorProfile(termenv.Ascii)
	os.Exit(m.Run())
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func fixture() *fakeDaemon {
	started := t0.Add(-3 * time.Hour)
	return &fakeDaemon{
		vms: []api.VM{
			{Name: "dev", State: api.VMRunning, VMM: "qemu", Image: "agent", CPUs: 2, MemoryBytes: 2 << 30,
				SSHPort: 2222, Ports: []api.Port{{HostPort: 4096, GuestPort: 4096}},
				StartedAt: &started, CPUPercent: 12.5, RSSBytes: 512 << 20, LiveSessions: 1},
			{Name: "build", State: api.VMStopped, VMM: "qemu", Image: "base", CPUs: 1, MemoryBytes: 1 << 30},
			{Name: "web-long-name-for-testing", State: api.VMError, VMM: "qemu", Image: "base", CPUs: 1,
				MemoryBytes: 1 << 30, LastError: "boot timed out"},
		},
		images: []api.Image{
			{Name: "agent", Default: true, State: api.ImageManaged, Suite: "bookworm", SizeBytes: 1610612736, Fingerprint: "9f8e7d6c5b4a3210"},
			{Name: "base", State: api.ImageStaged, Suite: "bookworm", SizeBytes: 400 << 20, Fingerprint: "0123456789abcdef"},
		},
		sessions: map[string][]api.Session{
			"dev": {
				{ID: "s1", Name: "claude", Command: "claude", State: api.SessionRunning},
				{ID: "s2", Name: "build", Command: "make", Args: []string{"-j2"}, State: api.SessionExited, Exit: &api.ExitStatus{Code: 2}},
			},
		},
		console: map[string]string{
			"dev": "Booting Linux\r\n\x1b[32m[  OK  ]\x1b[0m Started ssh.service\n\tindented\nlogin: \n",
		},
		health: map[string]api.Health{"dev": {VM: "dev", State: api.VMRunning, Agent: &api.AgentHealth{Version: "0.3.0"}}},
	}
}

// harness drives a Model the way bubbletea does: it runs the commands an
// Update returns and feeds their messages back, dropping timers (ticks,
// retries, the spinner) and commands that block (the event stream).
type harness struct {
	t *testing.T
	m Model
	f *fakeDaemon
}

func newHarness(t *testing.T, f *fakeDaemon, w, h int) *harness {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m := New(ctx, f)
	m.now = func() time.Time { return t0 }
	hs := &harness{t: t, m: m, f: f}
	hs.send(tea.WindowSizeMsg{Width: w, Height: h})
	hs.run(m.Init(), 0)
	return hs
}

func (h *harness) send(msg tea.Msg) {
	h.t.Helper()
	h.sendDepth(msg, 0)
}

func (h *harness) sendDepth(msg tea.Msg, depth int) {
	next, cmd := h.m.Update(msg)
	h.m = next.(Model)
	h.run(cmd, depth+1)
}

func (h *harness) run(cmd tea.Cmd, depth int) {
	if cmd == nil || depth > 10 {
		return
	}
	for _, msg := range collect(cmd) {
		switch msg.(type) {
		case spinner.TickMsg, statsTickMsg, retryMsg, nil:
			continue
		}
		h.sendDepth(msg, depth)
	}
}

// collect runs cmd (and the commands of a batch, concurrently) and
// returns the messages that arrive within a short wait.
func collect(cmd tea.Cmd) []tea.Msg {
	ch := make(chan tea.Msg, 1)
	go func() { ch <- cmd() }()
	select {
	case msg := <-ch:
		b, ok := msg.(tea.BatchMsg)
		if !ok {
			return []tea.Msg{msg}
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var out []tea.Msg
		for _, c := range b {
			if c == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				got := collect(c)
				mu.Lock()
				out = append(out, got...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return out
	case <-time.After(120 * time.Millisecond):
		return nil
	}
}

func (h *harness) keys(keys ...string) {
	h.t.Helper()
	for _, k := range keys {
		var msg tea.KeyMsg
		switch k {
		case "enter":
			msg = tea.KeyMsg{Type: tea.KeyEnter}
		case "esc":
			msg = tea.KeyMsg{Type: tea.KeyEsc}
		case "tab":
			msg = tea.KeyMsg{Type: tea.KeyTab}
		case "down":
			msg = tea.KeyMsg{Type: tea.KeyDown}
		case "up":
			msg = tea.KeyMsg{Type: tea.KeyUp}
		case "backspace":
			msg = tea.KeyMsg{Type: tea.KeyBackspace}
		default:
			msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
		}
		h.send(msg)
	}
}

func (h *harness) typeText(s string) {
	for _, r := range s {
		h.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
	}
}

// screen is the rendered view; it fails the test if it does not fit.
func (h *harness) screen() string {
	h.t.Helper()
	v := h.m.View()
	checkFits(h.t, v, h.m.width, h.m.height)
	return v
}

func checkFits(t *testing.T, v string, w, hgt int) {
	t.Helper()
	lines := strings.Split(v, "\n")
	if len(lines) > hgt {
		t.Errorf("%d lines, terminal has %d:\n%s", len(lines), hgt, v)
	}
	for i, l := range lines {
		if n := ansi.StringWidth(l); n > w {
			t.Errorf("line %d is %d wide, terminal has %d: %q", i+1, n, w, l)
		}
	}
}

func (h *harness) golden(name string) {
	h.t.Helper()
	got := h.screen()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatalf("%v (run go test ./internal/tui -update to create it)", err)
	}
	if got != string(want) {
		h.t.Errorf("screen differs from %s:\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}

func (h *harness) contains(parts ...string) {
	h.t.Helper()
	s := h.screen()
	for _, p := range parts {
		if !strings.Contains(s, p) {
			h.t.Errorf("screen lacks %q:\n%s", p, s)
		}
	}
}

func TestMainScreen(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fixture(), 80, 24)
	h.golden("main")
	h.contains("> dev", "running", ":2222 +1", "3h", "12.5", "512M",
		"agent: ok 0.3.0", "claude", "exited (exit 2)", "Started ssh.service", "agent", "9f8e7d6c5b4a", "*")
}

func TestNavigation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fixture(), 80, 24)
	h.keys("down")
	if h.m.selName != "build" {
		t.Fatalf("selected %q after down, want build", h.m.selName)
	}
	h.contains("> build", "agent: VM not running", "no sessions")
	h.keys("down", "down", "down") // stops at the last
	if h.m.selName != "web-long-name-for-testing" {
		t.Fatalf("selected %q, want the last VM", h.m.selName)
	}
	h.contains("last error: boot timed out")
	h.keys("k", "k")
	if h.m.selName != "dev" {
		t.Fatalf("selected %q after k k, want dev", h.m.selName)
	}
	// tab moves the focus to the sessions; up/down move there instead.
	h.keys("tab", "down")
	if h.m.focus != paneSessions || h.m.sessSel != 1 || h.m.selName != "dev" {
		t.Fatalf("focus %d session %d vm %s", h.m.focus, h.m.sessSel, h.m.selName)
	}
	h.contains("> build ")
	h.keys("tab", "down")
	if h.m.focus != paneImages || h.m.imgSel != 1 {
		t.Fatalf("focus %d image %d", h.m.focus, h.m.imgSel)
	}
	h.keys("tab")
	if h.m.focus != paneVMs {
		t.Fatalf("focus %d after three tabs", h.m.focus)
	}
}

func TestFilter(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fixture(), 80, 24)
	h.keys("/")
	h.typeText("bu")
	h.contains("/bu")
	h.keys("enter")
	if vis := h.m.visible(); len(vis) != 1 || vis[0].Name != "build" || h.m.selName != "build" {
		t.Fatalf("visible %v, selected %q", vis, h.m.selName)
	}
	h.contains(`filter "bu"`, "> build")
	h.keys("/")
	h.typeText("zzz")
	h.contains(`no VM matches "buzzz"`)
	h.keys("esc")
	if len(h.m.visible()) != 3 || h.m.filter != "" {
		t.Fatalf("esc did not clear the filter: %q", h.m.filter)
	}
}

// TestKeysInOneRead sends what a fast typist (or tmux send-keys) can
// deliver in one read: "/bu" as one message must still open the filter
// and type "bu" into it.
func TestKeysInOneRead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fixture(), 80, 24)
	h.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("/bu")})
	h.keys("enter")
	if h.m.filter != "bu" || h.m.selName != "build" {
		t.Fatalf("filter %q, selected %q", h.m.filter, h.m.selName)
	}
	h.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("dn")})
	if h.m.mode != modeNormal || len(h.f.deleted) != 0 {
		t.Fatalf("d then n: mode %d, deleted %v", h.m.mode, h.f.deleted)
	}
}

func TestCreateForm(t *testing.T) {
	t.Parallel()
	f := fixture()
	h := newHarness(t, f, 80, 24)
	h.keys("c")
	h.golden("form")
	h.typeText("Bad Name")
	h.keys("enter")
	h.contains("error: name: invalid VM name", "a lowercase")
	if h.m.mode != modeForm || len(f.created) != 0 {
		t.Fatalf("invalid name submitted: mode %d, created %v", h.m.mode, f.created)
	}
	for range len("Bad Name") {
		h.keys("backspace")
	}
	h.typeText("box1")
	h.keys("tab", "tab")
	h.typeText("two")
	h.keys("enter")
	h.contains(`error: cpus: "two" is not a whole number`)
	h.keys("backspace", "backspace", "backspace")
	h.typeText("2")
	h.keys("tab")
	h.typeText("1024")
	h.keys("enter")
	if h.m.mode != modeNormal {
		t.Fatalf("form still open: %s", h.screen())
	}
	want := api.CreateVMRequest{Name: "box1", CPUs: 2, MemoryMiB: 1024}
	if len(f.created) != 1 || !reflect.DeepEqual(f.created[0], want) {
		t.Fatalf("created %+v, want %+v", f.created, want)
	}
	h.contains("creating box1 (operation op123)", "vm.create box1")

	// esc cancels without a request.
	h.keys("c", "esc")
	if len(f.created) != 1 || h.m.mode != modeNormal {
		t.Fatalf("esc created a VM or kept the form")
	}
}

func TestDeleteAsksFirst(t *testing.T) {
	t.Parallel()
	f := fixture()
	h := newHarness(t, f, 80, 24)
	h.keys("d")
	h.contains("Stop and delete VM dev and its disks? (y/n)")
	h.keys("n")
	if len(f.deleted) != 0 {
		t.Fatalf("deleted %v after n", f.deleted)
	}
	h.contains("cancelled")
	h.keys("down", "d", "y")
	if len(f.deleted) != 1 || f.deleted[0] != "build" {
		t.Fatalf("deleted %v, want build", f.deleted)
	}
	h.contains("delete build: done")
	if slicesHasVM(h.m.vms, "build") {
		t.Fatal("build still listed after its delete")
	}
}

func slicesHasVM(vms []api.VM, name string) bool {
	for _, vm := range vms {
		if vm.Name == name {
			return true
		}
	}
	return false
}

func TestStopAndErrors(t *testing.T) {
	t.Parallel()
	f := fixture()
	h := newHarness(t, f, 80, 24)
	// A stopped VM cannot be stopped: the status line says why.
	h.keys("down", "x")
	h.contains("error: VM build is stopped, not running")
	if len(f.stopped) != 0 {
		t.Fatalf("stopped %v", f.stopped)
	}
	// The daemon refuses: its message and hint appear, no crash.
	f.stopErr = &api.Error{Code: api.CodeConflict, Message: `VM "dev" is being created`, Hint: "wait for the create to finish"}
	h.keys("up", "x")
	h.contains(`error: stop dev: VM "dev" is being created (wait for the create to finish)`)
	f.stopErr = nil
	h.keys("x")
	if len(f.stopped) != 1 || f.stopped[0] != "dev" {
		t.Fatalf("stopped %v", f.stopped)
	}
	h.contains("stop dev: done")
	// Without a terminal to hand over, ssh and attach fail politely.
	f.stopped = nil
	h.keys("s")
	h.contains("VM dev is stopped; start it first")
	h.keys("l")
	h.contains("console log of dev", "Started ssh.service", "    indented")
	h.keys("esc")
	h.keys("?")
	h.golden("help")
	h.keys("q")
	if h.m.mode != modeNormal {
		t.Fatal("a key did not close the help")
	}
}

func TestDaemonDown(t *testing.T) {
	t.Parallel()
	f := fixture()
	f.down = true
	h := newHarness(t, f, 80, 24)
	if !h.m.down {
		t.Fatal("model not in the daemon-down state")
	}
	h.golden("down")
	h.contains("not reachable", "no banger daemon is answering", "Retrying automatically in 1s")
	// Each failed retry doubles the wait.
	h.send(retryMsg{gen: h.m.retryGen})
	h.contains("Retrying automatically in 2s")
	h.send(retryMsg{gen: h.m.retryGen})
	h.contains("Retrying automatically in 4s")
	// A stale timer does nothing.
	calls := f.calls
	h.send(retryMsg{gen: h.m.retryGen - 1})
	if f.calls != calls {
		t.Fatal("a stale retry timer called the daemon")
	}
	// Keys that need a daemon are ignored; r retries at once.
	h.keys("x", "d")
	if h.m.mode != modeNormal {
		t.Fatal("a confirmation opened while the daemon is down")
	}
	f.setDown(false)
	h.keys("r")
	if h.m.down {
		t.Fatalf("still down after r with the daemon back: %s", h.screen())
	}
	h.contains("daemon is back", "> dev")
	if h.m.backoff != 0 {
		t.Fatalf("backoff %v not reset", h.m.backoff)
	}
	// It goes away again while the dashboard runs: a periodic list notices.
	f.setDown(true)
	h.send(statsTickMsg{})
	h.contains("not reachable", "Retrying automatically in 1s")
}

func TestBusEvents(t *testing.T) {
	t.Parallel()
	h := newHarness(t, fixture(), 80, 24)
	started := t0.Add(-time.Minute)
	h.send(busMsg{api.BusEvent{Kind: api.EventVM, VM: "new", Change: api.VMCreated, VMInfo: &api.VM{Name: "new", State: api.VMCreating, VMM: "qemu"}}})
	h.contains("new", "creating")
	h.send(busMsg{api.BusEvent{Kind: api.EventVM, VM: "new", Change: api.VMChanged, VMInfo: &api.VM{Name: "new", State: api.VMRunning, VMM: "qemu", StartedAt: &started}}})
	if vm := h.m.vms[len(h.m.vms)-1]; vm.State != api.VMRunning {
		t.Fatalf("new is %s after the change event", vm.State)
	}
	h.send(busMsg{api.BusEvent{Kind: api.EventVM, VM: "build", Change: api.VMDeleted, VMInfo: &api.VM{Name: "build"}}})
	if slicesHasVM(h.m.vms, "build") {
		t.Fatal("build still listed after its delete event")
	}
	// A session of the selected VM changes state.
	h.send(busMsg{api.BusEvent{Kind: api.EventSession, VM: "dev", Session: &api.Session{ID: "s1", Name: "claude", Command: "claude", State: api.SessionExited, Exit: &api.ExitStatus{Code: 0}}}})
	h.contains("claude         claude                       exited (exit 0)")
	// An operation runs its stages: the CLI's marks, one line.
	op := &api.Operation{ID: "op9", Kind: "vm.create", Target: "new", State: api.OpRunning}
	h.send(busMsg{api.BusEvent{Kind: api.EventOperation, Operation: op}})
	h.send(busMsg{api.BusEvent{Kind: api.EventOperation, Operation: op, Stage: &api.Stage{Seq: 1, Name: "disk", State: api.OpRunning}}})
	h.send(busMsg{api.BusEvent{Kind: api.EventOperation, Operation: op, Stage: &api.Stage{Seq: 1, Name: "disk", State: api.OpSucceeded}}})
	h.send(busMsg{api.BusEvent{Kind: api.EventOperation, Operation: op, Stage: &api.Stage{Seq: 2, Name: "boot", State: api.OpRunning}}})
	h.contains("operations", "vm.create new 0s · 1 stages done · … boot")
	// Select the VM being created: its detail lists the stages.
	h.keys("/")
	h.typeText("new")
	h.keys("enter")
	h.contains("✓ disk", "⠋ boot")
	fin := t0
	final := api.Operation{ID: "op9", Kind: "vm.create", Target: "new", State: api.OpFailed, Error: "boot timed out", CreatedAt: t0, FinishedAt: &fin,
		Stages: []api.Stage{{Seq: 1, Name: "disk", State: api.OpSucceeded}, {Seq: 2, Name: "boot", State: api.OpFailed, Error: "boot timed out"}}}
	h.send(busMsg{api.BusEvent{Kind: api.EventOperation, Operation: &final, Done: true}})
	h.contains("✗ vm.create new", "✗ boot: boot timed out", "error: vm.create new failed: boot timed out")
	// Finished operations leave the screen after a while.
	h.m.now = func() time.Time { return t0.Add(keepFinishedOps + time.Second) }
	h.send(statsTickMsg{})
	if len(h.m.ops) != 0 {
		t.Fatalf("finished operation still shown: %+v", h.m.ops)
	}
}

// TestSmallAndCrowded renders a crowded dashboard at 80x24 and at a
// cramped size: nothing may overflow.
func TestSmallAndCrowded(t *testing.T) {
	t.Parallel()
	f := fixture()
	for i := range 20 {
		f.vms = append(f.vms, api.VM{Name: fmt.Sprintf("vm-%02d-with-a-rather-long-name", i), State: api.VMRunning, VMM: "firecracker", Image: "an-image-with-a-long-name", SSHPort: 40000 + i})
	}
	for i := range 10 {
		f.images = append(f.images, api.Image{Name: fmt.Sprintf("img%d", i), State: api.ImageStaged, SizeBytes: 1 << 40, Fingerprint: strings.Repeat("ab", 32)})
	}
	for i := range 8 {
		f.sessions["dev"] = append(f.sessions["dev"], api.Session{ID: fmt.Sprint("x", i), Name: fmt.Sprint("s", i), Command: strings.Repeat("very-long-command ", 5), State: api.SessionRunning})
	}
	f.console["dev"] = strings.Repeat("a console line that is much longer than eighty columns, to see it cut at the edge\n", 50)
	f.ops = []api.Operation{
		{ID: "o1", Kind: "image.build", Target: "x", State: api.OpRunning, CreatedAt: t0},
		{ID: "o2", Kind: "vm.create", Target: "y", State: api.OpRunning, CreatedAt: t0},
		{ID: "o3", Kind: "workspace.prepare", Target: "z", State: api.OpRunning, CreatedAt: t0},
	}
	for _, size := range [][2]int{{80, 24}, {100, 40}, {60, 15}, {40, 10}, {20, 5}} {
		t.Run(fmt.Sprintf("%dx%d", size[0], size[1]), func(t *testing.T) {
			h := newHarness(t, f, size[0], size[1])
			h.screen()
			h.keys("down", "down", "down", "down", "down", "down", "down", "down", "down", "down")
			h.screen()
			h.keys("tab", "down", "down", "down")
			h.screen()
			h.keys("?")
			h.screen()
			h.keys("q", "c")
			h.screen()
			h.keys("esc", "l")
			h.screen()
		})
	}
	h := newHarness(t, f, 80, 24)
	h.golden("crowded")
}

func TestCleanLines(t *testing.T) {
	t.Parallel()
	got := cleanLines("a\x1b[1mb\x1b[0m\r\nprogress 10%\rprogress 100%\nbell\a\tx\n")
	want := []string{"ab", "progress 100%", "bell    x"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestTailWriter(t *testing.T) {
	t.Parallel()
	tw := &tailWriter{max: 5}
	fmt.Fprint(tw, "hello ")
	fmt.Fprint(tw, "world")
	if tw.String() != "world" {
		t.Fatalf("tail %q", tw.String())
	}
}

// TestEgressPanel: the selected VM's policy and its newest connections,
// the kept log first, then live events.
func TestEgressPanel(t *testing.T) {
	t.Parallel()
	f := fixture()
	f.vms[0].Egress, f.vms[0].EgressPolicy, f.vms[0].EgressAllow = api.EgressAllow, "agents", []string{"x.example"}
	f.egress = map[string][]api.EgressRecord{"dev": {{ID: 1, Time: t0, Decision: "allow", Process: "node", Session: "s1", Name: "api.anthropic.com", Port: 443, BytesUp: 4096}}}
	h := newHarness(t, f, 100, 30)
	h.contains("egress: allow (policy agents + 1 rule)", "api.anthropic.com:443", "s1/node")
	h.send(busMsg{api.BusEvent{Kind: api.EventEgress, VM: "dev", Egress: &api.EgressRecord{ID: 2, Time: t0, Decision: "deny", Process: "curl", Name: "evil.example", Port: 443}}})
	h.send(busMsg{api.BusEvent{Kind: api.EventEgress, VM: "build", Egress: &api.EgressRecord{ID: 3, Time: t0, Decision: "deny", Name: "other.example", Port: 80}}})
	h.contains("✗", "evil.example:443")
	if s := h.screen(); strings.Contains(s, "other.example") {
		t.Errorf("another VM's connection is on the selected VM's panel:\n%s", s)
	}
}

// TestParkedVM: a parked VM is listed and counted, its detail says how
// it wakes, and browsing it never asks its agent (that would wake it).
func TestParkedVM(t *testing.T) {
	t.Parallel()
	f := fixture()
	f.vms = append(f.vms, api.VM{Name: "idle", State: api.VMParked, VMM: "qemu", Image: "agent", CPUs: 2, MemoryBytes: 1 << 30, SSHPort: 2230})
	h := newHarness(t, f, 100, 30)
	h.contains("(1 running, 1 parked)")
	h.keys("down", "down", "down")
	h.contains("> idle", "parked", "agent: VM parked (saved to disk; ssh, exec or attach wakes it)", "its sessions show once it wakes")
	f.mu.Lock()
	listed := slices.Contains(f.sessionsOf, "idle")
	f.mu.Unlock()
	if listed {
		t.Fatal("the sessions of a parked VM were listed")
	}
	// Stopping is refused as for any VM not running; ssh is handed over
	// (the CLI wakes it), which here fails for want of a terminal.
	h.keys("x")
	h.contains("error: VM idle is parked, not running")
}
