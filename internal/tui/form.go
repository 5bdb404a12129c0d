package tui

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/charmbracelet/bubbles/textinput"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/bangerdev/banger/api"
)

// form is the small "create a VM" form: name, image, CPUs, memory.
type form struct {
	fields []textinput.Model
	labels []string
	focus  int
	err    string
}

const (
	fieldName = iota
	fieldImage
	fieldCPUs
	fieldMemory
)

func newForm() form {
	f := form{labels: []string{"name", "image", "cpus", "memory MiB"}}
	placeholders := []string{"(daemon picks one)", "(default image)", "(default)", "(default)"}
	for i := range f.labels {
		in := textinput.New()
		in.Prompt = ""
		in.Placeholder = placeholders[i]
		in.CharLimit = 64
		in.Width = 30
		f.fields = append(f.fields, in)
	}
	return f
}

// reset empties the form and focuses the first field.
func (f *form) reset() tea.Cmd {
	for i := range f.fields {
		f.fields[i].SetValue("")
		f.fields[i].Blur()
	}
	f.focus, f.err = 0, ""
	return f.fields[0].Focus()
}

func (f *form) move(delta int) tea.Cmd {
	f.fields[f.focus].Blur()
	f.focus = (f.focus + delta + len(f.fields)) % len(f.fields)
	return f.fields[f.focus].Focus()
}

// request validates the form into a create request; the error says
// which field is wrong and what it wants.
func (f *form) request() (api.CreateVMRequest, error) {
	var req api.CreateVMRequest
	req.Name = strings.TrimSpace(f.fields[fieldName].Value())
	if req.Name != "" {
		if err := api.ValidateName("VM", req.Name); err != nil {
			return req, fmt.Errorf("name: %s: %s", err, err.(*api.Error).Hint)
		}
	}
	req.Image = strings.TrimSpace(f.fields[fieldImage].Value())
	var err error
	if req.CPUs, err = positive(f.fields[fieldCPUs].Value(), "cpus", 64); err != nil {
		return req, err
	}
	if req.MemoryMiB, err = positive(f.fields[fieldMemory].Value(), "memory MiB", 1<<20); err != nil {
		return req, err
	}
	return req, nil
}

// positive parses an optional whole number in 1..limit; empty is 0 (the
// daemon's default).
func positive(s, what string, limit int) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > limit {
		return 0, fmt.Errorf("%s: %q is not a whole number from 1 to %d", what, s, limit)
	}
	return n, nil
}

func (f *form) update(msg tea.Msg) tea.Cmd {
	var cmd tea.Cmd
	f.fields[f.focus], cmd = f.fields[f.focus].Update(msg)
	return cmd
}

func (f form) view() []string {
	lines := []string{titleStyle.Render("Create a VM"), ""}
	for i, in := range f.fields {
		marker := "  "
		if i == f.focus {
			marker = "> "
		}
		lines = append(lines, fmt.Sprintf("%s%-11s %s", marker, f.labels[i]+":", in.View()))
	}
	lines = append(lines, "")
	if f.err != "" {
		for _, l := range wrap("error: "+f.err, 76) {
			lines = append(lines, errStyle.Render(l))
		}
	}
	lines = append(lines, dimStyle.Render("tab/↑↓ move · enter create · esc cancel"))
	return lines
}
