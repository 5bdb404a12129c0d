// Package humanize formats figures for people: the CLI's tables and the
// TUI's panes print ages and durations the same way.
package humanize

import (
	"fmt"
	"time"
)

// Duration is d in its largest whole unit: "42s", "5m", "17h", up to 47
// hours, then days ("3d"). A negative d (a clock that went back) is "0s".
func Duration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// Age is how long ago t was, as Duration prints it.
func Age(t time.Time) string { return Duration(time.Since(t)) }
