package api

import (
	"fmt"
	"strings"
)

// Summary is a one-line description of the event for people (`banger
// events`, the dashboard's status line).
func (ev BusEvent) Summary() string {
	switch ev.Kind {
	case EventVM:
		s := fmt.Sprintf("vm %s %s", ev.VM, ev.Change)
		if ev.VMInfo != nil && ev.Change != VMDeleted {
			s += ": " + ev.VMInfo.State
			if ev.VMInfo.LastError != "" {
				s += " (" + ev.VMInfo.LastError + ")"
			}
		}
		return s
	case EventSession:
		if ev.Session == nil {
			return "session " + ev.VM
		}
		s := fmt.Sprintf("session %s/%s %s", ev.VM, ev.Session.Name, ev.Session.State)
		if ev.Session.Exit != nil {
			s += fmt.Sprintf(" (exit %d)", ev.Session.Exit.Code)
		}
		if ev.Session.Error != "" {
			s += ": " + ev.Session.Error
		}
		return s
	case EventOperation:
		if ev.Operation == nil {
			return "operation"
		}
		op := ev.Operation
		s := fmt.Sprintf("op %s %s %s", op.ID, op.Kind, op.Target)
		switch {
		case ev.Done:
			s += ": " + op.State
			if op.Error != "" {
				s += ": " + op.Error
			}
		case ev.Stage != nil:
			s += fmt.Sprintf(": stage %s %s", ev.Stage.Name, ev.Stage.State)
			if ev.Stage.Error != "" {
				s += ": " + ev.Stage.Error
			}
		default:
			s += ": started"
		}
		return s
	case EventEgress:
		if ev.Egress == nil {
			return "egress " + ev.VM
		}
		r := ev.Egress
		s := fmt.Sprintf("egress %s %s %s %s", ev.VM, r.Decision, r.Proto, r.Target())
		if r.Process != "" {
			s += " by " + r.Process
		}
		if r.Rule != "" {
			s += " (rule " + r.Rule + ")"
		}
		return s
	}
	return strings.TrimSpace(ev.Kind + " " + ev.VM)
}
