// Package session is the guest side of banger's sessions: long-lived
// guest commands that outlive both the host daemon and the guest agent.
//
// Each session runs under its own supervisor process (the containerd-shim
// pattern): `banger-agent supervise --dir DIR`, started by the agent in a
// new session (setsid) so that it is in no process group the agent
// service stops. The supervisor owns the command, its pipes or PTY and its
// output logs, and keeps everything a client needs under DIR
// (DefaultDir/<id>/, a tmpfs, gone after a reboot):
//
//	meta.json       api.Session, replaced atomically on every state change
//	stdout.log(.1)  pipe mode output, capped per file, one rotated generation
//	stderr.log(.1)
//	output.log(.1)  PTY mode: the terminal's output
//	attach.sock     the supervisor's Unix socket (attach, signal, stop)
//	supervisor.lock held (flock) for the supervisor's life: a lock that can
//	                be taken means the supervisor is dead
//	supervisor.log  the supervisor's own log
//
// The Manager is what the agent serves from: it validates and preflights
// start requests, launches supervisors through a LaunchFunc (the agent
// owns process creation), and answers list/get/attach/signal/stop/logs by
// reading the state directory and talking to supervisors. It keeps no
// state of its own beyond launches in progress, so a restarted agent (a
// new Manager) finds every session again by scanning the directory.
//
// # Attach and backpressure
//
// Output goes to the log files first; the logs are the only buffer.
// Every attacher is a cursor that follows the logs from its replay point
// (start, last N lines, or now) to the live end, so replay and live
// output are one code path and an attacher holds one read buffer, never a
// queue. The command is slowed instead of output being lost: before a log
// rotates away a generation an attacher has not read yet, the writer
// waits for that attacher (the pipe fills, the command blocks in write).
// An attacher that makes no progress for Limits.StallTimeout while the
// writer waits for it is disconnected, so one stuck client cannot freeze
// a session; it can re-attach and replay what the logs still hold. Nobody
// attached means nothing to wait for: the logs rotate and the oldest
// output is dropped.
//
// In pipe mode stdout and stderr are separate logs and separate frame
// streams; their relative order is kept live but not across a replay.
//
// # Wiring on the host (to do in the daemon)
//
// The daemon forwards the CLI's requests to the agent routes (see
// internal/agent/sessions.go and internal/agentclient/sessions.go):
// start, list, show, signal, stop and logs are plain JSON calls; attach is
// an upgraded stream of internal/mux frames that the daemon splices to the
// CLI's own upgraded connection (mux.RunExec drives the client end; pass a
// nil stdin together with Stdin=false for a read-only attach). The daemon
// caches the last api.Session it saw per VM and marks a session lost when
// the agent's boot id differs from Session.BootID (the guest rebooted),
// and publishes state changes on its event bus by polling ListSessions or
// after its own start/stop calls.
package session

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/bangerdev/banger/api"
)

// DefaultDir holds one directory per session.
const DefaultDir = "/run/banger/sessions"

// File names in a session directory.
const (
	metaFile       = "meta.json"
	socketFile     = "attach.sock"
	lockFile       = "supervisor.lock"
	supervisorLog  = "supervisor.log"
	stdoutLog      = "stdout.log"
	stderrLog      = "stderr.log"
	outputLog      = "output.log"
	rotatedSuffix  = ".1"
	tempFilePrefix = ".tmp-"
)

// Limits bound a session's resources and waits. The zero value of a field
// means its default.
type Limits struct {
	// LogBytes caps each log file; one rotated generation is kept, so a
	// stream keeps at most about 2*LogBytes.
	LogBytes int64 `json:"log_bytes,omitempty"`
	// StallTimeout is how long the output writer waits for an attacher
	// that makes no progress before disconnecting it.
	StallTimeout time.Duration `json:"stall_timeout,omitempty"`
	// LaunchWindow: a command that dies with a failure status within it
	// counts as a failed launch (state failed, with its first stderr
	// lines), and Start waits that long for the verdict.
	LaunchWindow time.Duration `json:"launch_window,omitempty"`
	// Linger is how long an exited session's supervisor keeps serving
	// attachers that are still reading; after that the Manager serves
	// them from the logs on disk.
	Linger time.Duration `json:"linger,omitempty"`
}

func (l Limits) withDefaults() Limits {
	if l.LogBytes <= 0 {
		l.LogBytes = 8 << 20
	}
	if l.StallTimeout <= 0 {
		l.StallTimeout = 10 * time.Second
	}
	if l.LaunchWindow <= 0 {
		l.LaunchWindow = 300 * time.Millisecond
	}
	if l.Linger <= 0 {
		l.Linger = 10 * time.Second
	}
	return l
}

// stderrHeadLines and stderrHeadBytes bound Session.StderrHead.
const (
	stderrHeadLines = 20
	stderrHeadBytes = 4 << 10
)

// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const DefaultStopTimeout = 10 * time.Second

var namePattern = regexp.MustCompile(api.SessionNamePattern)

// ValidateRef checks a session id or name: both become path components.
func ValidateRef(ref string) error {
	if !namePattern.MatchString(ref) {
		return api.Errorf(api.CodeInvalid, "use 1-63 characters: a lowercase letter or digit first, then lowercase letters, digits, '.', '_' or '-'",
			"invalid session name %q", ref)
	}
	return nil
}

// Errors the Manager returns are *api.Error values with a code; these
// sentinels let callers test for the common ones with errors.Is.
var (
	ErrNotFound = errors.New("session not found")
	ErrBusy     = errors.New("session stdin has a writer")
)

// codedError is an *api.Error that also matches a sentinel.
type codedError struct {
	err      *api.Error
	sentinel error
}

func (e *codedError) Error() string   { return e.err.Message }
func (e *codedError) Unwrap() []error { return []error{e.err, e.sentinel} }

func notFound(ref string) error {
	return &codedError{api.Errorf(api.CodeNotFound, "list the VM's sessions to see their names", "no session %q", ref), ErrNotFound}
}

func invalidf(hint, format string, args ...any) error {
	return api.Errorf(api.CodeInvalid, hint, format, args...)
}

func conflictf(hint, format string, args ...any) error {
	return api.Errorf(api.CodeConflict, hint, format, args...)
}

func internalf(format string, args ...any) error {
	return &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf(format, args...)}
}
