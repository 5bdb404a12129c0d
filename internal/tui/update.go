package tui

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/spinner"
	"github.com/charmbracelet/bubbles/viewport"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/bangerdev/banger/api"
)

// Update handles one message.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.logs.Width, m.logs.Height = msg.Width, max(msg.Height-2, 1)
		return m, nil
	case tea.KeyMsg:
		return m.key(msg)
	case spinner.TickMsg:
		var cmd tea.Cmd
		m.spinner, cmd = m.spinner.Update(msg)
		return m, cmd
	case listedMsg:
		return m.listed(msg)
	case statsTickMsg:
		m.tick++
		cmds := []tea.Cmd{statsTick()}
		if !m.down {
			cmds = append(cmds, m.list(m.tick%imagesEveryTicks == 0, false, false))
			if vm, ok := m.selected(); ok && m.tick%detailEveryTicks == 0 {
				cmds = append(cmds, m.fetchDetail(vm))
			}
		}
		m.pruneOps()
		return m, tea.Batch(cmds...)
	case retryMsg:
		if msg.gen != m.retryGen || !m.down {
			return m, nil
		}
		return m, m.list(true, true, false)
	case detailMsg:
		if msg.d.vm == m.selName {
			m.detail = msg.d
			m.sessSel = min(m.sessSel, max(len(m.detail.sessions)-1, 0))
		}
		return m, nil
	case busMsg:
		cmd := m.event(msg.ev)
		return m, tea.Batch(cmd, waitEvent(m.events))
	case busEndedMsg:
		m.events = nil
		if m.ctx.Err() != nil {
			return m, nil
		}
		// The stream ended: the daemon went away (or restarted). A list
		// tells which, and a successful one subscribes again.
		return m, m.list(true, true, false)
	case actionMsg:
		if msg.err != nil {
			m.setErr(fmt.Sprintf("%s %s: %s", msg.verb, msg.vm, errText(msg.err)))
		} else {
			m.setStatus(fmt.Sprintf("%s %s: done", msg.verb, msg.vm))
		}
		return m, m.list(false, false, false)
	case createdMsg:
		if msg.err != nil {
			m.setErr("create: " + errText(msg.err))
			return m, nil
		}
		m.setStatus(fmt.Sprintf("creating %s (operation %s)", orDefault(msg.name, "a VM"), msg.op.ID))
		m.upsertOp(api.Operation{ID: msg.op.ID, Kind: "vm.create", Target: msg.name, State: api.OpRunning, CreatedAt: m.now()})
		return m, nil
	case handoffDoneMsg:
		return m.handoffDone(msg)
	case afterSSHMsg:
		if msg.err != nil {
			m.setErr("after ssh: " + errText(msg.err))
			return m, nil
		}
		s := fmt.Sprintf("back from ssh: VM %s is %s", msg.vm.Name, msg.vm.State)
		if msg.vm.State == api.VMRunning {
			s = fmt.Sprintf("back from ssh: VM %s is still running (x stop, d delete)", msg.vm.Name)
		}
		s += " · " + agentLine(&msg.health, msg.health.AgentErr)
		m.setStatus(s)
		return m, nil
	case logsMsg:
		if msg.vm != m.logsVM {
			return m, nil
		}
		text := strings.Join(cleanLines(msg.text), "\n")
		if msg.err != nil {
			text = "error: " + errText(msg.err)
		} else if text == "" {
			text = "(the console log is empty)"
		}
		m.logs.SetContent(text)
		m.logs.GotoBottom()
		return m, nil
	}
	if m.mode == modeForm {
		return m, m.form.update(msg)
	}
	if m.mode == modeFilter {
		var cmd tea.Cmd
		m.filterIn, cmd = m.filterIn.Update(msg)
		return m, cmd
	}
	return m, nil
}

func (m Model) listed(msg listedMsg) (tea.Model, tea.Cmd) {
	if msg.err != nil {
		if isDown(msg.err) {
			return m.goDown(msg.err)
		}
		m.setErr("list: " + errText(msg.err))
		return m, nil
	}
	var cmds []tea.Cmd
	if m.down || msg.initial {
		if m.down {
			m.setStatus("daemon is back")
		}
		m.down, m.downErr, m.backoff = false, "", 0
		m.retryGen++
	}
	if m.events == nil {
		cmds = append(cmds, m.subscribe())
	}
	m.vms, m.loaded = msg.vms, true
	if msg.withImgs {
		m.images = msg.images
		m.imgSel = min(m.imgSel, max(len(m.images)-1, 0))
	}
	if msg.withOps {
		for _, op := range msg.ops {
			if op.State == api.OpRunning {
				m.upsertOp(op)
			}
		}
	}
	cmds = append(cmds, m.fixSelection())
	return m, tea.Batch(cmds...)
}

// goDown enters the daemon-down state and schedules a retry with
// exponential backoff.
func (m Model) goDown(err error) (tea.Model, tea.Cmd) {
	if m.evCancel != nil {
		m.evCancel()
		m.evCancel, m.events = nil, nil
	}
	if m.backoff == 0 {
		m.backoff = firstBackoff
	} else {
		m.backoff = min(2*m.backoff, maxBackoff)
	}
	m.down, m.downErr = true, errText(err)
	m.retryGen++
	m.retryAt = m.now().Add(m.backoff)
	gen := m.retryGen
	return m, tea.Tick(m.backoff, func(time.Time) tea.Msg { return retryMsg{gen} })
}

// visible is the VM list after the filter.
func (m Model) visible() []api.VM {
	if m.filter == "" {
		return m.vms
	}
	var out []api.VM
	for _, vm := range m.vms {
		if strings.Contains(vm.Name, m.filter) {
			out = append(out, vm)
		}
	}
	return out
}

func (m Model) selected() (api.VM, bool) {
	for _, vm := range m.visible() {
		if vm.Name == m.selName {
			return vm, true
		}
	}
	return api.VM{}, false
}

func (m Model) selIndex() int {
	for i, vm := range m.visible() {
		if vm.Name == m.selName {
			return i
		}
	}
	return -1
}

// fixSelection keeps a VM selected when there is one and loads its
// detail when the selection changed.
func (m *Model) fixSelection() tea.Cmd {
	vis := m.visible()
	if _, ok := m.selected(); !ok {
		m.selName = ""
		if len(vis) > 0 {
			m.selName = vis[0].Name
		}
	}
	if m.selName == "" {
		m.detail = detail{}
		return nil
	}
	if m.detail.vm != m.selName {
		m.detail = detail{vm: m.selName}
		m.sessSel = 0
		vm, _ := m.selected()
		return m.fetchDetail(vm)
	}
	return nil
}

func (m *Model) moveSel(delta int) tea.Cmd {
	switch m.focus {
	case paneSessions:
		if n := len(m.detail.sessions); n > 0 {
			m.sessSel = clamp(m.sessSel+delta, 0, n-1)
		}
		return nil
	case paneImages:
		if n := len(m.images); n > 0 {
			m.imgSel = clamp(m.imgSel+delta, 0, n-1)
		}
		return nil
	}
	vis := m.visible()
	if len(vis) == 0 {
		return nil
	}
	i := clamp(m.selIndex()+delta, 0, len(vis)-1)
	m.selName = vis[i].Name
	return m.fixSelection()
}

// event applies one bus event.
func (m *Model) event(ev api.BusEvent) tea.Cmd {
	switch ev.Kind {
	case api.EventVM:
		if ev.VMInfo == nil {
			return nil
		}
		i := slices.IndexFunc(m.vms, func(v api.VM) bool { return v.Name == ev.VM })
		switch {
		case ev.Change == api.VMDeleted:
			if i >= 0 {
				m.vms = slices.Delete(m.vms, i, i+1)
			}
		case i >= 0:
			m.vms[i] = *ev.VMInfo
		default:
			m.vms = append(m.vms, *ev.VMInfo)
		}
		cmd := m.fixSelection()
		if cmd == nil && ev.VM == m.selName {
			// Its state changed: sessions, health and console did too.
			cmd = m.fetchDetail(*ev.VMInfo)
		}
		return cmd
	case api.EventSession:
		if ev.Session == nil || ev.VM != m.selName {
			return nil
		}
		ss := m.detail.sessions
		if i := slices.IndexFunc(ss, func(s api.Session) bool { return s.ID == ev.Session.ID }); i >= 0 {
			ss[i] = *ev.Session
		} else {
			m.detail.sessions = append(ss, *ev.Session)
		}
		return nil
	case api.EventEgress:
		if ev.Egress == nil || ev.VM != m.selName || !m.detail.loaded {
			return nil
		}
		m.detail.egress = append(m.detail.egress, *ev.Egress)
		if n := len(m.detail.egress); n > egressKeep {
			m.detail.egress = slices.Delete(m.detail.egress, 0, n-egressKeep)
		}
		return nil
	case api.EventOperation:
		if ev.Operation == nil {
			return nil
		}
		op := ev.Operation
		if ev.Done {
			m.upsertOp(*op)
			if op.State == api.OpFailed {
				m.setErr(fmt.Sprintf("%s %s failed: %s", op.Kind, op.Target, op.Error))
			} else {
				m.setStatus(fmt.Sprintf("%s %s: %s", op.Kind, op.Target, op.State))
			}
			if strings.HasPrefix(op.Kind, "image.") {
				return m.list(true, false, false)
			}
			return nil
		}
		cur := m.upsertOp(api.Operation{ID: op.ID, Kind: op.Kind, Target: op.Target, State: api.OpRunning, CreatedAt: m.now()})
		if ev.Stage != nil {
			st := cur.op.Stages
			if j := slices.IndexFunc(st, func(s api.Stage) bool { return s.Seq == ev.Stage.Seq }); j >= 0 {
				st[j] = *ev.Stage
			} else {
				cur.op.Stages = append(st, *ev.Stage)
			}
		}
		return nil
	}
	return nil
}

// upsertOp records op (merging with what is known) and returns its entry.
func (m *Model) upsertOp(op api.Operation) *opView {
	for i := range m.ops {
		v := &m.ops[i]
		if v.op.ID != op.ID {
			continue
		}
		if op.State != api.OpRunning {
			v.op, v.finished = op, m.now()
		} else if len(op.Stages) > len(v.op.Stages) {
			v.op.Stages = op.Stages
		}
		if v.op.Target == "" {
			v.op.Target = op.Target
		}
		return v
	}
	v := opView{op: op}
	if op.State != api.OpRunning {
		v.finished = m.now()
	}
	if v.op.CreatedAt.IsZero() {
		v.op.CreatedAt = m.now()
	}
	m.ops = append(m.ops, v)
	return &m.ops[len(m.ops)-1]
}

func (m *Model) pruneOps() {
	m.ops = slices.DeleteFunc(m.ops, func(v opView) bool {
		return !v.finished.IsZero() && m.now().Sub(v.finished) > keepFinishedOps
	})
}

func (m *Model) setStatus(s string) { m.status, m.statusErr = s, false }
func (m *Model) setErr(s string)    { m.status, m.statusErr = s, true }

// key handles a key press in the current mode.
func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	// Keys typed faster than the terminal is read arrive as one message
	// ("/dev" then enter); each is a key of its own here, in order, so
	// that "/" switches to the filter before "dev" is typed into it.
	if k.Type == tea.KeyRunes && len(k.Runes) > 1 && !k.Paste {
		var cmds []tea.Cmd
		var next tea.Model = m
		for _, r := range k.Runes {
			var cmd tea.Cmd
			next, cmd = next.(Model).key(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}, Alt: k.Alt})
			cmds = append(cmds, cmd)
		}
		return next, tea.Batch(cmds...)
	}
	if k.String() == "ctrl+c" {
		return m, m.quit()
	}
	switch m.mode {
	case modeHelp:
		m.mode = modeNormal
		return m, nil
	case modeConfirm:
		m.mode = modeNormal
		if k.String() == "y" || k.String() == "Y" {
			m.setStatus(m.confirm.prompt + " yes")
			return m, m.confirm.yes
		}
		m.setStatus("cancelled")
		return m, nil
	case modeLogs:
		switch k.String() {
		case "esc", "q", "l":
			m.mode = modeNormal
			return m, nil
		case "r":
			return m, m.fetchLogs(m.logsVM)
		}
		var cmd tea.Cmd
		m.logs, cmd = m.logs.Update(k)
		return m, cmd
	case modeFilter:
		switch k.String() {
		case "enter":
			m.mode = modeNormal
			m.filterIn.Blur()
			return m, nil
		case "esc":
			m.mode = modeNormal
			m.filterIn.Blur()
			m.filterIn.SetValue("")
			m.filter = ""
			return m, m.fixSelection()
		}
		var cmd tea.Cmd
		m.filterIn, cmd = m.filterIn.Update(k)
		m.filter = strings.TrimSpace(m.filterIn.Value())
		return m, tea.Batch(cmd, m.fixSelection())
	case modeForm:
		switch k.String() {
		case "esc":
			m.mode = modeNormal
			m.setStatus("create cancelled")
			return m, nil
		case "tab", "down":
			return m, m.form.move(1)
		case "shift+tab", "up":
			return m, m.form.move(-1)
		case "enter":
			req, err := m.form.request()
			if err != nil {
				m.form.err = err.Error()
				return m, nil
			}
			m.mode = modeNormal
			m.setStatus("creating " + orDefault(req.Name, "a VM") + "…")
			return m, m.create(req)
		}
		return m, m.form.update(k)
	}

	if m.down {
		switch k.String() {
		case "q":
			return m, m.quit()
		case "r":
			m.setStatus("retrying…")
			m.retryGen++
			return m, m.list(true, true, false)
		case "?":
			m.mode = modeHelp
		}
		return m, nil
	}

	vm, haveVM := m.selected()
	switch k.String() {
	case "q":
		return m, m.quit()
	case "?":
		m.mode = modeHelp
	case "up", "k":
		return m, m.moveSel(-1)
	case "down", "j":
		return m, m.moveSel(1)
	case "tab":
		m.focus = (m.focus + 1) % paneCount
	case "shift+tab":
		m.focus = (m.focus + paneCount - 1) % paneCount
	case "/":
		m.mode = modeFilter
		m.filterIn.SetValue(m.filter)
		return m, m.filterIn.Focus()
	case "c", "n":
		m.mode = modeForm
		return m, m.form.reset()
	case "x":
		if !haveVM {
			m.setErr("no VM selected")
			return m, nil
		}
		if vm.State != api.VMRunning {
			m.setErr(fmt.Sprintf("VM %s is %s, not running", vm.Name, vm.State))
			return m, nil
		}
		m.setStatus("stopping " + vm.Name + "…")
		be := m.be
		return m, m.action("stop", vm.Name, func(ctx context.Context) error { _, err := be.StopVM(ctx, vm.Name, false); return err })
	case "r":
		if !haveVM {
			m.setErr("no VM selected")
			return m, nil
		}
		m.setStatus("restarting " + vm.Name + "…")
		be := m.be
		return m, m.action("restart", vm.Name, func(ctx context.Context) error { _, err := be.RestartVM(ctx, vm.Name); return err })
	case "d":
		if !haveVM {
			m.setErr("no VM selected")
			return m, nil
		}
		prompt := fmt.Sprintf("Delete VM %s and its disks?", vm.Name)
		if vm.State == api.VMRunning {
			prompt = fmt.Sprintf("Stop and delete VM %s and its disks?", vm.Name)
		}
		be := m.be
		m.mode = modeConfirm
		m.confirm = confirmation{prompt: prompt, yes: m.action("delete", vm.Name, func(ctx context.Context) error { return be.DeleteVM(ctx, vm.Name, false) })}
	case "l":
		if !haveVM {
			m.setErr("no VM selected")
			return m, nil
		}
		m.mode, m.logsVM = modeLogs, vm.Name
		m.logs = viewport.New(m.width, max(m.height-2, 1))
		m.logs.SetContent("loading…")
		return m, m.fetchLogs(vm.Name)
	case "s":
		if !haveVM {
			m.setErr("no VM selected")
			return m, nil
		}
		// ssh through the CLI wakes a parked VM first.
		if vm.State != api.VMRunning && vm.State != api.VMParked {
			m.setErr(fmt.Sprintf("VM %s is %s; start it first (r restarts it)", vm.Name, vm.State))
			return m, nil
		}
		return m, m.handoffTo("ssh", vm.Name, "", "vm", "ssh", vm.Name)
	case "a":
		if !haveVM {
			m.setErr("no VM selected")
			return m, nil
		}
		s, ok := m.attachTarget()
		if !ok {
			m.setErr(fmt.Sprintf("no running session in %s: start one with `banger vm session start %s -- CMD`", vm.Name, vm.Name))
			return m, nil
		}
		return m, m.handoffTo("attach", vm.Name, s.Name, "vm", "session", "attach", vm.Name, s.ID)
	}
	return m, nil
}

// attachTarget is the selected session when the sessions pane has the
// focus, else the newest live one.
func (m Model) attachTarget() (api.Session, bool) {
	ss := m.detail.sessions
	if m.focus == paneSessions && m.sessSel < len(ss) {
		s := ss[m.sessSel]
		return s, !s.Final()
	}
	for i := len(ss) - 1; i >= 0; i-- {
		if !ss[i].Final() {
			return ss[i], true
		}
	}
	return api.Session{}, false
}

func (m Model) create(req api.CreateVMRequest) tea.Cmd {
	be := m.be
	ctx, cancel := m.call()
	return func() tea.Msg {
		defer cancel()
		ref, err := be.CreateVM(ctx, req)
		return createdMsg{name: req.Name, op: ref, err: err}
	}
}

// handoffTo gives the terminal to a child `banger ARGS...` and takes it
// back when the child ends.
func (m Model) handoffTo(kind, vm, session string, args ...string) tea.Cmd {
	if m.handoff == nil {
		return func() tea.Msg {
			return handoffDoneMsg{kind: kind, vm: vm, session: session, err: errors.New("no terminal to hand over")}
		}
	}
	// bubbletea ignores SIGINT while the child has the terminal: a
	// Ctrl-C then is the child's (ssh forwards it, a pipe-mode attach
	// detaches), not a reason for the dashboard to end.
	return tea.ExecProcess(m.handoff(args...), func(err error) tea.Msg {
		return handoffDoneMsg{kind: kind, vm: vm, session: session, err: err}
	})
}

func (m Model) handoffDone(msg handoffDoneMsg) (tea.Model, tea.Cmd) {
	var ee *exec.ExitError
	code := 0
	if errors.As(msg.err, &ee) {
		code = ee.ExitCode()
	} else if msg.err != nil {
		m.setErr(fmt.Sprintf("%s %s: %s", msg.kind, msg.vm, errText(msg.err)))
		return m, nil
	}
	cmds := []tea.Cmd{m.list(false, false, false)}
	if vm, ok := m.selected(); ok {
		cmds = append(cmds, m.fetchDetail(vm))
	}
	switch msg.kind {
	case "ssh":
		if code == 255 {
			m.setErr(fmt.Sprintf("ssh to %s failed (exit 255); see `banger vm health %s`", msg.vm, msg.vm))
		}
		be, name := m.be, msg.vm
		ctx, cancel := m.call()
		cmds = append(cmds, func() tea.Msg {
			defer cancel()
			vm, err := be.GetVM(ctx, name)
			if err != nil {
				return afterSSHMsg{err: err}
			}
			h := api.Health{}
			if vm.State == api.VMRunning {
				if h, err = be.Health(ctx, name); err != nil {
					h.AgentErr = errText(err)
				}
			}
			return afterSSHMsg{vm: vm, health: h}
		})
	case "attach":
		if code == 0 {
			m.setStatus(fmt.Sprintf("back from session %s (detached, or it ended with status 0)", msg.session))
		} else {
			m.setStatus(fmt.Sprintf("back from session %s: exit status %d", msg.session, code))
		}
	}
	return m, tea.Batch(cmds...)
}

func (m Model) quit() tea.Cmd {
	if m.evCancel != nil {
		m.evCancel()
	}
	return tea.Quit
}

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
