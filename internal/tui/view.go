package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/humanize"
)

var (
	titleStyle = lipgloss.NewStyle().Bold(true)
	headStyle  = lipgloss.NewStyle().Bold(true).Underline(true)
	selStyle   = lipgloss.NewStyle().Reverse(true)
	dimStyle   = lipgloss.NewStyle().Faint(true)
	errStyle   = lipgloss.NewStyle().Foreground(lipgloss.Color("1")).Bold(true)
	okStyle    = lipgloss.NewStyle().Foreground(lipgloss.Color("2"))
	warnStyle  = lipgloss.NewStyle().Foreground(lipgloss.Color("3"))
)

// keyHelp lists every key; the help bar shows the first few.
var keyHelp = [][2]string{
	{"↑↓/jk", "move"},
	{"tab", "switch pane (VMs, sessions, images)"},
	{"c", "create a VM"},
	{"s", "ssh into the VM (exit returns here)"},
	{"a", "attach the selected (or newest live) session; detach returns"},
	{"x", "stop the VM"},
	{"r", "restart the VM (retry when the daemon is down)"},
	{"d", "delete the VM (asks first)"},
	{"l", "console log (r reloads, esc back)"},
	{"/", "filter VMs by name (esc clears)"},
	{"?", "this help"},
	{"q", "quit"},
}

const shortHelp = "c:create s:ssh a:attach x:stop r:restart d:delete l:logs /:filter ?:help q:quit"

// View renders the screen: never wider than the terminal, never taller.
func (m Model) View() string {
	w, h := m.width, m.height
	if w <= 0 || h <= 0 {
		w, h = 80, 24
	}
	var lines []string
	switch {
	case m.mode == modeHelp:
		lines = m.helpView()
	case m.mode == modeLogs:
		lines = append([]string{titleStyle.Render("console log of " + m.logsVM)}, strings.Split(m.logs.View(), "\n")...)
		lines = append(fit(lines, h-1), dimStyle.Render("↑↓ pgup pgdn scroll · r reload · esc back"))
	case m.down:
		lines = m.downView(h)
	case m.mode == modeForm:
		lines = append([]string{m.header()}, m.form.view()...)
		lines = append(pad(fit(lines, h-1), h-1), m.statusLine())
	default:
		lines = m.mainView(h)
	}
	lines = fit(lines, h)
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, w, "…")
	}
	return strings.Join(lines, "\n")
}

// fit cuts lines to n.
func fit(lines []string, n int) []string {
	if len(lines) > n {
		return lines[:max(n, 0)]
	}
	return lines
}

// pad fills lines up to n with empty ones, so the status line and the
// help bar stay at the bottom of the screen.
func pad(lines []string, n int) []string {
	for len(lines) < n {
		lines = append(lines, "")
	}
	return lines
}

func (m Model) header() string {
	running, parked := 0, 0
	for _, vm := range m.vms {
		switch vm.State {
		case api.VMRunning:
			running++
		case api.VMParked:
			parked++
		}
	}
	counts := fmt.Sprintf("%d running", running)
	if parked > 0 {
		counts += fmt.Sprintf(", %d parked", parked)
	}
	s := fmt.Sprintf("banger · %d VMs (%s) · %d images", len(m.vms), counts, len(m.images))
	if m.filter != "" {
		s += fmt.Sprintf(" · filter %q", m.filter)
	}
	return titleStyle.Render(s)
}

func (m Model) statusLine() string {
	switch {
	case m.mode == modeConfirm:
		return warnStyle.Render(m.confirm.prompt + " (y/n)")
	case m.mode == modeFilter:
		return m.filterIn.View()
	case m.status == "":
		return ""
	case m.statusErr:
		return errStyle.Render("error: ") + m.status
	}
	return m.status
}

func (m Model) helpBar() string { return dimStyle.Render(shortHelp) }

func (m Model) helpView() []string {
	lines := []string{titleStyle.Render("banger tui — keys"), ""}
	for _, k := range keyHelp {
		lines = append(lines, fmt.Sprintf("  %-7s %s", k[0], k[1]))
	}
	return append(lines, "", "VMs and sessions update live from the daemon's event stream; CPU% and RSS",
		"refresh every few seconds. Any key closes this help.")
}

func (m Model) downView(h int) []string {
	wait := m.retryAt.Sub(m.now()).Round(time.Second)
	if wait < 0 {
		wait = 0
	}
	lines := []string{
		titleStyle.Render("banger"), "",
		errStyle.Render("The banger daemon is not reachable."),
		"",
	}
	lines = append(lines, wrap(m.downErr, max(m.width-2, 20))...)
	lines = append(lines, "",
		fmt.Sprintf("Retrying automatically in %s (backoff up to %s).", wait, maxBackoff),
		"Press r to retry now, q to quit.")
	return append(pad(fit(lines, h-2), h-2), m.statusLine(), dimStyle.Render("r retry  q quit  ? help"))
}

// mainView is the dashboard: VMs, the selected VM's detail, operations,
// images, the status line and the help bar, sized to h lines.
func (m Model) mainView(h int) []string {
	vis := m.visible()
	opLines := m.opsView()
	// Budget: header, status, help bar are fixed.
	avail := h - 3
	vmRows := clamp(len(vis), 1, 8)
	imgRows := clamp(len(m.images), 1, 3)
	opRows := len(opLines)
	detailMin := 5
	for 1+vmRows+1+imgRows+opRows+detailMin > avail {
		switch {
		case vmRows > 3:
			vmRows--
		case opRows > 2:
			opRows--
		case imgRows > 1:
			imgRows--
		case detailMin > 2:
			detailMin--
		case vmRows > 1:
			vmRows--
		default:
			opRows = max(opRows-1, 0)
			if opRows == 0 {
				detailMin = 0
			}
		}
		if vmRows == 1 && imgRows == 1 && opRows == 0 && detailMin == 0 {
			break
		}
	}
	detailRows := max(avail-(1+vmRows)-(1+imgRows)-opRows, 0)

	lines := []string{m.header()}
	lines = append(lines, m.vmTable(vis, vmRows)...)
	lines = append(lines, fit(m.detailView(detailRows), detailRows)...)
	lines = append(lines, fit(opLines, opRows)...)
	lines = append(lines, m.imageTable(imgRows)...)
	return append(pad(fit(lines, h-2), h-2), m.statusLine(), m.helpBar())
}

func paneTitle(s string, focused bool) string {
	if focused {
		return headStyle.Render("▸ " + s)
	}
	return headStyle.Render(s)
}

// vmTable renders the header line and up to rows VM lines, scrolled so
// the selection is visible.
func (m Model) vmTable(vis []api.VM, rows int) []string {
	nameW := clamp(m.width-66, 8, 31)
	format := "%-2s%-" + fmt.Sprint(nameW) + "s %-8s %-5s %-12s %-11s %5s %5s %5s %3s"
	head := fmt.Sprintf(format, "", "NAME", "STATE", "VMM", "IMAGE", "ADDRESS", "UP", "CPU%", "RSS", "SES")
	out := []string{paneTitle(strings.TrimRight(head, " "), m.focus == paneVMs)}
	if !m.loaded {
		return append(out, "  loading…")
	}
	if len(vis) == 0 {
		if m.filter != "" {
			return append(out, fmt.Sprintf("  no VM matches %q (esc in / clears)", m.filter))
		}
		return append(out, "  no VMs yet: press c to create one")
	}
	sel := m.selIndex()
	start := 0
	if sel >= rows {
		start = sel - rows + 1
	}
	for i := start; i < len(vis) && i < start+rows; i++ {
		vm := vis[i]
		up, cpu, rss, ses := "-", "-", "-", "-"
		if vm.StartedAt != nil {
			up = humanize.Duration(m.now().Sub(*vm.StartedAt))
			cpu = fmt.Sprintf("%.1f", vm.CPUPercent)
			rss = shortBytes(vm.RSSBytes)
		}
		if vm.State == api.VMRunning || vm.LiveSessions > 0 {
			ses = fmt.Sprint(vm.LiveSessions)
		}
		marker := "  "
		if i == sel {
			marker = "> "
		}
		line := fmt.Sprintf(format, marker, cut(vm.Name, nameW), vm.State, cut(vm.VMM, 5), cut(vm.Image, 12), address(vm), up, cpu, rss, ses)
		line = strings.TrimRight(line, " ")
		switch {
		case i == sel && m.focus == paneVMs:
			line = selStyle.Render(line)
		case vm.State == api.VMError:
			line = errStyle.Render(line)
		case vm.State == api.VMParked:
			line = dimStyle.Render(line)
		}
		out = append(out, line)
	}
	return out
}

// address is where the VM answers on the host: its own address in tap
// mode, else its SSH forward and how many more ports are forwarded.
func address(vm api.VM) string {
	if vm.Address != "" {
		return vm.Address
	}
	if vm.SSHPort == 0 {
		return "-"
	}
	s := fmt.Sprintf(":%d", vm.SSHPort)
	if n := len(vm.Ports); n > 0 {
		s += fmt.Sprintf(" +%d", n)
	}
	return s
}

func (m Model) detailView(rows int) []string {
	if rows <= 0 {
		return nil
	}
	vm, ok := m.selected()
	if !ok {
		return nil
	}
	title := fmt.Sprintf("%s · %s · %d cpu · %s", vm.Name, vm.State, vm.CPUs, shortBytes(vm.MemoryBytes))
	if len(vm.Ports) > 0 {
		var ps []string
		for _, p := range vm.Ports {
			ps = append(ps, fmt.Sprintf("%d→%d", p.HostPort, p.GuestPort))
		}
		title += " · ports " + strings.Join(ps, " ")
	}
	out := []string{paneTitle(title, m.focus == paneSessions)}
	d := m.detail
	agent := "agent: -"
	switch {
	case !d.loaded:
		agent = "loading…"
	case vm.State == api.VMParked:
		agent = "agent: VM parked (saved to disk; ssh, exec or attach wakes it)"
	case vm.State != api.VMRunning:
		agent = "agent: VM not running"
	default:
		agent = agentLine(d.health, d.healthErr)
	}
	if vm.LastError != "" {
		agent += " · last error: " + vm.LastError
	}
	out = append(out, "  "+agent)
	if vm.Egress != "" {
		out = append(out, "  egress: "+vm.EgressSummary())
	}
	// An operation on this VM (its create, a workspace prepare) lists its
	// stages the way the CLI prints them.
	for _, v := range m.ops {
		if v.op.Target != vm.Name {
			continue
		}
		for _, st := range v.op.Stages {
			if len(out) >= rows-1 {
				break
			}
			out = append(out, "  "+stageLine(st, m.spinner.View()))
		}
	}
	// Sessions take up to half of what is left; the console tail the rest.
	left := rows - len(out)
	sessRows := 0
	switch {
	case d.sessErr != "":
		out = append(out, "  sessions: "+d.sessErr)
	case len(d.sessions) == 0 && d.loaded:
		out = append(out, "  no sessions")
	default:
		sessRows = min(len(d.sessions), max(left/2, 1))
		start := 0
		if m.sessSel >= sessRows {
			start = m.sessSel - sessRows + 1
		}
		for i := start; i < len(d.sessions) && i < start+sessRows; i++ {
			s := d.sessions[i]
			marker := "  "
			if i == m.sessSel && m.focus == paneSessions {
				marker = "> "
			}
			line := fmt.Sprintf("%s%-14s %-28s %s", marker, cut(s.Name, 14), cut(commandOf(s), 28), sessionState(s))
			if i == m.sessSel && m.focus == paneSessions {
				line = selStyle.Render(line)
			}
			out = append(out, line)
		}
	}
	// The live egress panel: the newest connections, up to a third of
	// what is left.
	left = rows - len(out)
	if vm.Egress == api.EgressAllow && left > 1 {
		switch {
		case d.egressErr != "":
			out = append(out, dimStyle.Render("  egress log: "+d.egressErr))
		case len(d.egress) == 0 && d.loaded:
			out = append(out, dimStyle.Render("  no connections yet"))
		default:
			n := min(len(d.egress), max(left/3, 1))
			for _, r := range d.egress[len(d.egress)-n:] {
				out = append(out, "  "+egressLine(r))
			}
		}
	}
	left = rows - len(out)
	if left > 0 {
		switch {
		case d.consErr != "":
			out = append(out, dimStyle.Render("  console: "+d.consErr))
		case len(d.console) > 0:
			tail := d.console[max(len(d.console)-left, 0):]
			for _, l := range tail {
				out = append(out, dimStyle.Render("  │ "+l))
			}
		}
	}
	return out
}

// egressLine is one connection of the egress panel.
func egressLine(r api.EgressRecord) string {
	mark := "✓"
	if r.Denied() {
		mark = "✗"
	}
	who := r.Process
	if r.Session != "" {
		who = r.Session + "/" + who
	}
	line := fmt.Sprintf("%s %s %-8s %-14s %-30s %s↑ %s↓", mark, r.Time.Local().Format("15:04:05"), r.Decision, cut(who, 14),
		cut(r.Target(), 30), shortBytes(r.BytesUp), shortBytes(r.BytesDown))
	if r.Denied() {
		return errStyle.Render(line)
	}
	return line
}

// stageLine is one stage as `banger vm create` prints it.
func stageLine(s api.Stage, spin string) string {
	took := ""
	if s.FinishedAt != nil {
		took = s.FinishedAt.Sub(s.StartedAt).Round(100 * time.Millisecond).String()
	}
	switch s.State {
	case api.OpRunning:
		return spin + " " + s.Name
	case api.OpSucceeded:
		return okStyle.Render("✓") + fmt.Sprintf(" %-12s %s", s.Name, took)
	}
	return errStyle.Render("✗") + fmt.Sprintf(" %-12s %s: %s", s.Name, took, s.Error)
}

func agentLine(h *api.Health, errText string) string {
	switch {
	case errText != "":
		return errStyle.Render("agent: unreachable") + " (" + errText + ")"
	case h == nil:
		return "agent: -"
	case h.Agent != nil:
		s := okStyle.Render("agent: ok")
		if h.Agent.Version != "" {
			s += " " + h.Agent.Version
		}
		return s
	case h.AgentErr != "":
		return errStyle.Render("agent: unreachable") + " (" + h.AgentErr + ")"
	}
	return "agent: -"
}

func commandOf(s api.Session) string {
	return strings.Join(append([]string{s.Command}, s.Args...), " ")
}

func sessionState(s api.Session) string {
	st := s.State
	if s.Exit != nil {
		st += fmt.Sprintf(" (exit %d)", s.Exit.Code)
	}
	if s.Error != "" && s.State != api.SessionRunning {
		st += ": " + s.Error
	}
	return st
}

// opsView shows each operation on one line: kind, target, a spinner
// while it runs, the stages done and the one running, as the CLI lists
// them (✓ done, … running, ✗ failed).
func (m Model) opsView() []string {
	if len(m.ops) == 0 {
		return nil
	}
	out := []string{headStyle.Render("operations")}
	for _, v := range m.ops {
		op := v.op
		icon := m.spinner.View()
		switch op.State {
		case api.OpSucceeded:
			icon = okStyle.Render("✓")
		case api.OpFailed:
			icon = errStyle.Render("✗")
		}
		elapsed := m.now().Sub(op.CreatedAt)
		if !v.finished.IsZero() && op.FinishedAt != nil {
			elapsed = op.FinishedAt.Sub(op.CreatedAt)
		}
		done := 0
		var cur []string
		for _, s := range op.Stages {
			switch s.State {
			case api.OpSucceeded:
				done++
			case api.OpRunning:
				cur = append(cur, "… "+s.Name)
			case api.OpFailed:
				cur = append(cur, "✗ "+s.Name+": "+s.Error)
			}
		}
		line := fmt.Sprintf("  %s %s %s %s · %d stages done", icon, op.Kind, op.Target, humanize.Duration(elapsed), done)
		if len(cur) > 0 {
			line += " · " + strings.Join(cur, ", ")
		}
		if op.State == api.OpFailed && op.Error != "" && len(cur) == 0 {
			line += " · " + op.Error
		}
		out = append(out, line)
	}
	return out
}

func (m Model) imageTable(rows int) []string {
	format := "%-2s%-15s %-15s %-8s %-3s %7s  %s"
	head := fmt.Sprintf(format, "", "IMAGE", "DISTRO", "STATE", "DEF", "SIZE", "FINGERPRINT")
	out := []string{paneTitle(head, m.focus == paneImages)}
	if len(m.images) == 0 {
		if m.loaded {
			out = append(out, "  no images: build one with `banger image build`")
		}
		return out
	}
	start := 0
	if m.imgSel >= rows {
		start = m.imgSel - rows + 1
	}
	for i := start; i < len(m.images) && i < start+rows; i++ {
		img := m.images[i]
		def := ""
		if img.Default {
			def = "*"
		}
		distro := "debian"
		if img.Suite != "" {
			distro += " " + img.Suite
		}
		marker := "  "
		if i == m.imgSel && m.focus == paneImages {
			marker = "> "
		}
		line := fmt.Sprintf(format, marker, cut(img.Name, 15), cut(distro, 15), img.State, def, shortBytes(img.SizeBytes), prefix(img.Fingerprint, 12))
		if i == m.imgSel && m.focus == paneImages {
			line = selStyle.Render(line)
		}
		out = append(out, line)
	}
	return out
}

func cut(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func prefix(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func shortBytes(n int64) string {
	const (
		k = 1 << 10
		m = 1 << 20
		g = 1 << 30
	)
	switch {
	case n <= 0:
		return "-"
	case n >= g:
		return fmt.Sprintf("%.1fG", float64(n)/g)
	case n >= m:
		return fmt.Sprintf("%dM", n/m)
	case n >= k:
		return fmt.Sprintf("%dK", n/k)
	}
	return fmt.Sprintf("%dB", n)
}

// cleanLines splits console output into printable lines: escape
// sequences, carriage returns and other control characters removed.
func cleanLines(s string) []string {
	s = ansi.Strip(s)
	var out []string
	for line := range strings.Lines(s) {
		line = strings.TrimRight(line, "\r\n")
		if i := strings.LastIndexByte(line, '\r'); i >= 0 {
			line = line[i+1:]
		}
		line = strings.ReplaceAll(line, "\t", "    ")
		line = strings.Map(func(r rune) rune {
			switch {
			case r < 0x20 || r == 0x7f:
				return -1
			}
			return r
		}, line)
		out = append(out, line)
	}
	return out
}

func wrap(s string, w int) []string {
	var out []string
	for _, para := range strings.Split(s, "\n") {
		for len(para) > w {
			i := strings.LastIndexByte(para[:w], ' ')
			if i <= 0 {
				i = w
			}
			out = append(out, para[:i])
			para = strings.TrimLeft(para[i:], " ")
		}
		out = append(out, para)
	}
	return out
}
