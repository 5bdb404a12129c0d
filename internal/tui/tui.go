// Package tui is `banger tui`, a live dashboard of the daemon's VMs,
// sessions, operations and images. It talks to the daemon only through
// the Go client (a Backend), follows the daemon's event bus for changes
// and lists VMs every few seconds only to refresh the CPU and memory
// figures. ssh and attach hand the terminal to a child `banger` process
// and take it back when that ends.
package tui

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/charmbracelet/bubbles/spinner"
	"github.com/charmbracelet/bubbles/textinput"
	"github.com/charmbracelet/bubbles/viewport"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/client"
)

// Backend is the part of the daemon client the dashboard uses;
// *client.Client is the real one.
type Backend interface {
	ListVMs(ctx context.Context) ([]api.VM, error)
	ListImages(ctx context.Context) ([]api.Image, error)
	ListOperations(ctx context.Context) ([]api.Operation, error)
	ListSessions(ctx context.Context, vm string) ([]api.Session, error)
	GetVM(ctx context.Context, name string) (api.VM, error)
	Health(ctx context.Context, name string) (api.Health, error)
	Logs(ctx context.Context, name string, follow bool, w io.Writer) error
	CreateVM(ctx context.Context, req api.CreateVMRequest) (api.OperationRef, error)
	StopVM(ctx context.Context, name string, force bool) (api.VM, error)
	RestartVM(ctx context.Context, name string) (api.VM, error)
	DeleteVM(ctx context.Context, name string, force bool) error
	WatchEvents(ctx context.Context, vm string, fn func(api.BusEvent)) error
	EgressLog(ctx context.Context, name string, q api.EgressLogQuery) ([]api.EgressRecord, error)
}

var _ Backend = (*client.Client)(nil)

// Timing of the dashboard. statsEvery is the one poll: a VM list for CPU
// and memory figures, which have no events. Everything else follows the
// event bus.
const (
	statsEvery       = 2500 * time.Millisecond
	imagesEveryTicks = 12 // images change rarely: every 30 s, and after image operations
	detailEveryTicks = 4  // selected VM's health and console tail: every 10 s, and on its events
	callTimeout      = 10 * time.Second
	firstBackoff     = time.Second
	maxBackoff       = 30 * time.Second
	// keepFinishedOps is how long a finished operation stays on screen.
	keepFinishedOps = 15 * time.Second
	// consoleTailBytes is how much of a console log is read for its tail.
	consoleTailBytes = 64 << 10
	// egressKeep is how many of the selected VM's egress records the
	// live panel keeps.
	egressKeep = 50
)

// Options configure the dashboard.
type Options struct {
	Backend Backend
	// Exe and Socket build the child `banger` of a terminal handoff
	// (ssh, attach); Exe defaults to this executable.
	Exe    string
	Socket string
}

// Run shows the dashboard until the user quits.
func Run(ctx context.Context, o Options) error {
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Exe = exe
	}
	// Not the CLI's interrupt context: bubbletea handles SIGINT and
	// SIGTERM itself, and ignores them while a child has the terminal,
	// where the CLI's context would end the dashboard under it.
	m := New(context.WithoutCancel(ctx), o.Backend)
	m.handoff = func(args ...string) *exec.Cmd {
		argv := args
		if o.Socket != "" {
			argv = append([]string{"--socket", o.Socket}, args...)
		}
		return exec.Command(o.Exe, argv...)
	}
	p := tea.NewProgram(m, tea.WithAltScreen())
	_, err := p.Run()
	if errors.Is(err, tea.ErrInterrupted) {
		return nil
	}
	return err
}

type mode int

const (
	modeNormal mode = iota
	modeForm
	modeConfirm
	modeLogs
	modeHelp
	modeFilter
)

type pane int

const (
	paneVMs pane = iota
	paneSessions
	paneImages
	paneCount
)

// Model is the dashboard's state. It is a value (bubbletea style); the
// channel and cancel funcs it holds are shared between copies on purpose.
type Model struct {
	ctx     context.Context
	be      Backend
	handoff func(args ...string) *exec.Cmd
	now     func() time.Time

	width, height int

	vms      []api.VM
	images   []api.Image
	loaded   bool
	selName  string // selected VM, by name so that list changes keep it
	sessSel  int
	imgSel   int
	focus    pane
	filter   string
	tick     int
	ops      []opView
	detail   detail
	spinner  spinner.Model
	filterIn textinput.Model
	logs     viewport.Model
	logsVM   string
	form     form
	mode     mode
	confirm  confirmation

	// Daemon reachability. gen invalidates retry timers from before.
	down     bool
	downErr  string
	backoff  time.Duration
	retryAt  time.Time
	retryGen int

	events   chan tea.Msg
	evCancel context.CancelFunc

	status    string
	statusErr bool
}

type detail struct {
	vm        string
	loaded    bool
	sessions  []api.Session
	sessErr   string
	health    *api.Health
	healthErr string
	console   []string
	consErr   string
	// egress is the newest of the VM's egress log (mode allow), oldest
	// first; live events append to it.
	egress    []api.EgressRecord
	egressErr string
}

type opView struct {
	op       api.Operation
	finished time.Time
}

type confirmation struct {
	prompt string
	yes    tea.Cmd
}

// New returns the dashboard model over be.
func New(ctx context.Context, be Backend) Model {
	sp := spinner.New(spinner.WithSpinner(spinner.MiniDot))
	fi := textinput.New()
	fi.Prompt = "/"
	fi.Placeholder = "filter VMs by name"
	return Model{
		ctx: ctx, be: be, now: time.Now,
		width: 80, height: 24,
		spinner: sp, filterIn: fi,
		form: newForm(),
	}
}

// Messages.
type (
	listedMsg struct {
		vms      []api.VM
		images   []api.Image
		withImgs bool
		ops      []api.Operation
		withOps  bool
		err      error
		initial  bool
	}
	detailMsg struct {
		d detail
	}
	statsTickMsg struct{}
	retryMsg     struct{ gen int }
	busMsg       struct{ ev api.BusEvent }
	busEndedMsg  struct{ err error }
	actionMsg    struct {
		verb, vm string
		err      error
	}
	createdMsg struct {
		name string
		op   api.OperationRef
		err  error
	}
	handoffDoneMsg struct {
		kind, vm, session string
		err               error
	}
	afterSSHMsg struct {
		vm     api.VM
		health api.Health
		err    error
	}
	logsMsg struct {
		vm   string
		text string
		err  error
	}
)

// Init loads everything once and starts the stats ticker.
func (m Model) Init() tea.Cmd {
	return tea.Batch(m.list(true, true, true), statsTick(), m.spinner.Tick)
}

func statsTick() tea.Cmd {
	return tea.Tick(statsEvery, func(time.Time) tea.Msg { return statsTickMsg{} })
}

func (m Model) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.ctx, callTimeout)
}

// list fetches the VMs, and the images and operations when asked.
func (m Model) list(images, ops, initial bool) tea.Cmd {
	be := m.be
	ctx, cancel := m.call()
	return func() tea.Msg {
		defer cancel()
		msg := listedMsg{withImgs: images, withOps: ops, initial: initial}
		msg.vms, msg.err = be.ListVMs(ctx)
		if msg.err != nil {
			return msg
		}
		if images {
			msg.images, msg.err = be.ListImages(ctx)
		}
		if ops && msg.err == nil {
			msg.ops, msg.err = be.ListOperations(ctx)
		}
		return msg
	}
}

// fetchDetail loads the selected VM's sessions, agent health and console
// tail.
func (m Model) fetchDetail(vm api.VM) tea.Cmd {
	be := m.be
	ctx, cancel := m.call()
	return func() tea.Msg {
		defer cancel()
		d := detail{vm: vm.Name, loaded: true}
		if vm.State == api.VMParked {
			// Asking a parked VM's agent would wake it: browsing the
			// list must not undo a park.
			d.sessErr = "the VM is parked; its sessions show once it wakes"
		} else if ss, err := be.ListSessions(ctx, vm.Name); err != nil {
			d.sessErr = errText(err)
		} else {
			d.sessions = ss
		}
		if vm.State == api.VMRunning {
			if h, err := be.Health(ctx, vm.Name); err != nil {
				d.healthErr = errText(err)
			} else {
				d.health = &h
			}
		}
		if vm.Egress == api.EgressAllow {
			if recs, err := be.EgressLog(ctx, vm.Name, api.EgressLogQuery{Limit: egressKeep}); err != nil {
				d.egressErr = errText(err)
			} else {
				d.egress = recs
			}
		}
		tw := &tailWriter{max: consoleTailBytes}
		if err := be.Logs(ctx, vm.Name, false, tw); err != nil {
			d.consErr = errText(err)
		}
		d.console = cleanLines(tw.String())
		return detailMsg{d}
	}
}

func (m Model) fetchLogs(name string) tea.Cmd {
	be := m.be
	ctx, cancel := m.call()
	return func() tea.Msg {
		defer cancel()
		tw := &tailWriter{max: 4 * consoleTailBytes}
		err := be.Logs(ctx, name, false, tw)
		return logsMsg{vm: name, text: tw.String(), err: err}
	}
}

// subscribe follows the event bus; each event arrives as a busMsg, the
// end of the stream as a busEndedMsg.
func (m *Model) subscribe() tea.Cmd {
	if m.evCancel != nil {
		m.evCancel()
	}
	ctx, cancel := context.WithCancel(m.ctx)
	ch := make(chan tea.Msg, 128)
	m.events, m.evCancel = ch, cancel
	be := m.be
	go func() {
		err := be.WatchEvents(ctx, "", func(ev api.BusEvent) {
			select {
			case ch <- busMsg{ev}:
			case <-ctx.Done():
			}
		})
		select {
		case ch <- busEndedMsg{err}:
		case <-ctx.Done():
		}
	}()
	return waitEvent(ch)
}

func waitEvent(ch chan tea.Msg) tea.Cmd {
	return func() tea.Msg {
		msg, ok := <-ch
		if !ok {
			return nil
		}
		return msg
	}
}

func (m Model) action(verb, vm string, fn func(ctx context.Context) error) tea.Cmd {
	ctx := m.ctx
	return func() tea.Msg {
		// Lifecycle calls can take a while (a graceful stop waits for
		// the guest); the daemon finishes them even if we leave.
		c, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		return actionMsg{verb: verb, vm: vm, err: fn(c)}
	}
}

// isDown tells a daemon that is not there from one that said no.
func isDown(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code == api.CodeUnavailable
	}
	return err != nil && !errors.Is(err, context.Canceled)
}

func errText(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Hint != "" {
		return ae.Message + " (" + ae.Hint + ")"
	}
	return err.Error()
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string { return string(t.buf) }
