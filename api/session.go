package api

import (
	"net/url"
	"strconv"
	"time"
)

// Wire types of guest sessions: long-lived guest commands that run under
// their own supervisor in the guest and that clients attach to later. The
// guest agent serves them (internal/agentapi.AgentSessionsPath) and the
// daemon forwards the same bodies (see internal/session for the guest side).

// Session states.
const (
	// SessionStarting: the supervisor is being launched.
	SessionStarting = "starting"
	// SessionRunning: the command runs.
	SessionRunning = "running"
	// SessionExited: the command ended; Exit says how.
	SessionExited = "exited"
	// SessionFailed: the command could not be launched, or it died with a
	// failure status within the launch window; Error and StderrHead say why.
	SessionFailed = "failed"
	// SessionLost: the session's supervisor is gone without recording an
	// end (it was killed, or the guest rebooted and /run was emptied).
	SessionLost = "lost"
)

// Session modes.
const (
	SessionModePipe = "pipe"
	SessionModePTY  = "pty"
)

// SessionNamePattern is what session ids and names must match: both are
// directory names in the guest, so no slashes, no leading dot.
const SessionNamePattern = `^[a-z0-9][a-z0-9._-]{0,62}$`

// StartSessionRequest is the body of POST /v1/sessions.
type StartSessionRequest struct {
	// Name is unique among the VM's live sessions; empty means the id.
	Name string   `json:"name,omitempty"`
	Argv []string `json:"argv"`
	// Cwd defaults to /root.
	Cwd string            `json:"cwd,omitempty"`
	Env map[string]string `json:"env,omitempty"`
	PTY bool              `json:"pty,omitempty"`
	// Rows and Cols are the initial terminal size (PTY mode).
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// Session is a session's metadata, as persisted in the guest
// (meta.json) and returned by every session route.
type Session struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Command string   `json:"command"`
	Args    []string `json:"args,omitempty"`
	// Path is what Command resolved to on the session's PATH.
	Path string `json:"path,omitempty"`
	Cwd  string `json:"cwd"`
	// EnvKeys names the variables the request set; values are never
	// stored or returned.
	EnvKeys []string `json:"env_keys,omitempty"`
	Mode    string   `json:"mode"`
	State   string   `json:"state"`
	// PID is the command's pid (its process group id too).
	PID           int         `json:"pid,omitempty"`
	SupervisorPID int         `json:"supervisor_pid,omitempty"`
	StartedAt     time.Time   `json:"started_at"`
	EndedAt       *time.Time  `json:"ended_at,omitempty"`
	Exit          *ExitStatus `json:"exit,omitempty"`
	// Error is why a session failed or was lost.
	Error string `json:"error,omitempty"`
	// StderrHead is the first lines of output on stderr (the terminal in
	// PTY mode) of a failed launch.
	StderrHead string `json:"stderr_head,omitempty"`
	// BootID is the guest boot the session belongs to: a host that sees
	// another boot id on /healthz knows the session is lost.
	BootID string `json:"boot_id,omitempty"`
}

// Final reports whether the session can no longer change.
func (s Session) Final() bool {
	return s.State == SessionExited || s.State == SessionFailed || s.State == SessionLost
}

// AttachSessionRequest is the body of POST /v1/sessions/{ref}/attach,
// which answers "101 Switching Protocols" (Upgrade: MuxProtocol) and then
// speaks internal/mux frames: Stdout/Stderr (replay, then live output),
// then one Exit frame when the command has ended; the client sends Stdin,
// StdinClose, Signal and Resize. Closing the stream detaches; it never
// stops the session.
type AttachSessionRequest struct {
	// FromStart replays all output still kept; Tail replays the last Tail
	// lines of each stream. With neither, only new output is sent.
	FromStart bool `json:"from_start,omitempty"`
	Tail      int  `json:"tail,omitempty"`
	// Stdin asks to be the session's one stdin writer; a second writer is
	// refused (409) unless StealStdin takes the role over. Without Stdin
	// the attacher's Stdin and StdinClose frames are ignored.
	Stdin      bool `json:"stdin,omitempty"`
	StealStdin bool `json:"steal_stdin,omitempty"`
	// Rows and Cols, when set, resize the session's terminal on attach.
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// SignalSessionRequest is the body of POST /v1/sessions/{ref}/signal.
type SignalSessionRequest struct {
	Signal int `json:"signal"`
}

// StopSessionRequest is the body of POST /v1/sessions/{ref}/stop: SIGTERM
// to the command's process group, SIGKILL after TimeoutSeconds (default
// 10). The answer is the session once it has ended.
type StopSessionRequest struct {
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
}

// Session log streams for GET /v1/sessions/{ref}/logs?stream=...
const (
	SessionStreamStdout = "stdout"
	SessionStreamStderr = "stderr"
)

// SessionLogsRequest selects what GET /v1/sessions/{ref}/logs returns,
// as query parameters: stream=stdout|stderr, tail=N (lines), follow=1.
// The answer is the raw bytes of one stream (PTY sessions only have
// stdout).
type SessionLogsRequest struct {
	Stream string
	Tail   int
	Follow bool
}

// Query encodes r as the query string of a logs request (the daemon's
// route and the agent's take the same one).
func (r SessionLogsRequest) Query() url.Values {
	q := url.Values{}
	if r.Stream != "" {
		q.Set("stream", r.Stream)
	}
	if r.Tail > 0 {
		q.Set("tail", strconv.Itoa(r.Tail))
	}
	if r.Follow {
		q.Set("follow", "1")
	}
	return q
}

// ParseSessionLogsRequest reads the query string of a logs request. The
// stream name is checked against the session later: PTY sessions only
// have stdout.
func ParseSessionLogsRequest(q url.Values) (SessionLogsRequest, error) {
	req := SessionLogsRequest{Stream: q.Get("stream"), Follow: q.Get("follow") == "1" || q.Get("follow") == "true"}
	if t := q.Get("tail"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return req, Errorf(CodeInvalid, "pass a number of lines", "invalid tail %q", t)
		}
		req.Tail = n
	}
	return req, nil
}

// BusEvent is one line of the daemon's GET /v1/events stream (NDJSON):
// something changed that a dashboard or an orchestrator may want to
// know without polling. Kind says which fields are set.
type BusEvent struct {
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
	// VM is the name of the VM the event is about (for operations: the
	// target of a VM or workspace operation).
	VM      string   `json:"vm,omitempty"`
	Session *Session `json:"session,omitempty"`
	// Change says what happened to a VM (VMCreated, VMChanged,
	// VMDeleted); VMInfo is the VM as it is now (as it was, for a
	// deleted one).
	Change string `json:"change,omitempty"`
	VMInfo *VM    `json:"vm_info,omitempty"`
	// Operation is the operation of an EventOperation (without stages
	// while it runs; the final record when Done); Stage the stage that
	// started or finished, if that is the news.
	Operation *Operation `json:"operation,omitempty"`
	Stage     *Stage     `json:"stage,omitempty"`
	Done      bool       `json:"done,omitempty"`
	// Egress is the record of an EventEgress.
	Egress *EgressRecord `json:"egress,omitempty"`
}

// Event kinds of BusEvent.
const (
	// EventSession: a session appeared or its state changed; Session is
	// the new metadata (as the daemon last saw it).
	EventSession = "session"
	// EventVM: a VM was created, deleted, or its state, pid or last
	// error changed.
	EventVM = "vm"
	// EventOperation: an operation started, one of its stages started or
	// finished, or it finished (Done).
	EventOperation = "operation"
	// EventEgress: a VM's egress gateway finished a connection or a DNS
	// query; Egress is its log record.
	EventEgress = "egress"
)

// Values of BusEvent.Change.
const (
	VMCreated = "created"
	VMChanged = "changed"
	VMDeleted = "deleted"
)
