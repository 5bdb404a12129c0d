// Package system is banger's only shell-out layer. Every external command
// runs through a Runner so that the rest of the daemon can be tested with a
// Fake, and so that one place decides the environment (LC_ALL=C) and the
// shape of command errors. It also holds the small /proc readers and file
// helpers (clone, sparse create, atomic write) that other packages need.
package system

import (
	"errors"
	"os/exec"
)

var (
	// ErrNotFound is exec.ErrNotFound re-exported, so that callers outside
	// this package can recognise a missing executable with errors.Is
	// without importing os/exec themselves.
	ErrNotFound = exec.ErrNotFound

	// ErrBadProcStat reports a /proc/PID/stat line that does not have the
	// documented shape.
	ErrBadProcStat = errors.New("malformed /proc stat line")
)
