package session

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/system"
)

// LaunchFunc starts a supervisor for the session in dir (`banger-agent
// supervise --dir DIR`), in a new session (setsid) so that nothing that
// stops the agent's process group stops it, with files as its descriptors
// 0 (launch spec), 1 and 2 (its log) and 3 (ready). It must not wait for
// the supervisor; it should reap it when it exits.
type LaunchFunc func(dir string, files []*os.File) error

// Options configure a Manager.
type Options struct {
	// Dir holds the session directories (DefaultDir).
	Dir    string
	Launch LaunchFunc
	// BaseEnv is what every command's environment starts from.
	BaseEnv map[string]string
	// DefaultCwd is where commands run without an explicit cwd.
	DefaultCwd string
	// BootID is recorded in every session (see api.Session.BootID).
	BootID string
	Limits Limits
	Log    *slog.Logger
}

// Manager serves sessions from the state directory. It holds no state of
// its own, so any number of Managers (an agent and its restarted self)
// agree on what exists.
type Manager struct {
	opts Options
	log  *slog.Logger
}

// launchTimeout bounds the wait for a supervisor's launch verdict beyond
// the launch window.
const launchTimeout = 10 * time.Second

// NewManager returns a Manager for opts.
func NewManager(opts Options) *Manager {
	if opts.Dir == "" {
		opts.Dir = DefaultDir
	}
	if opts.DefaultCwd == "" {
		opts.DefaultCwd = "/root"
	}
	opts.Limits = opts.Limits.withDefaults()
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Manager{opts: opts, log: log}
}

// Start preflights req, launches its supervisor and returns the session
// once the launch has an outcome: running, or already exited or failed
// within the launch window. Preflight failures (bad cwd, unknown command,
// name taken) are *api.Error values and leave nothing behind.
func (m *Manager) Start(ctx context.Context, req api.StartSessionRequest) (api.Session, error) {
	if err := validateStart(req); err != nil {
		return api.Session{}, err
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = m.opts.DefaultCwd
	}
	if st, err := os.Stat(cwd); err != nil {
		return api.Session{}, invalidf("pass an existing directory with --cwd", "working directory %s does not exist in the guest", cwd)
	} else if !st.IsDir() {
		return api.Session{}, invalidf("pass a directory with --cwd", "working directory %s is not a directory", cwd)
	}
	env := m.commandEnv(req)
	pathEnv := envValue(env, "PATH")
	path, err := lookPath(req.Argv[0], pathEnv, cwd)
	if err != nil {
		return api.Session{}, invalidf("install it in the image or pass its full path", "command %q: %v (PATH=%s, cwd %s)", req.Argv[0], err, pathEnv, cwd)
	}
	if err := os.MkdirAll(m.opts.Dir, 0o700); err != nil {
		return api.Session{}, internalf("create session directory: %v", err)
	}

	mode := api.SessionModePipe
	if req.PTY {
		mode = api.SessionModePTY
	}
	meta := api.Session{
		Name:      req.Name,
		Command:   req.Argv[0],
		Args:      req.Argv[1:],
		Path:      path,
		Cwd:       cwd,
		EnvKeys:   slices.Sorted(maps.Keys(req.Env)),
		Mode:      mode,
		State:     api.SessionStarting,
		StartedAt: time.Now().UTC(),
		BootID:    m.opts.BootID,
	}
	dir, err := m.create(&meta)
	if err != nil {
		return api.Session{}, err
	}
	log := m.log.With("session", meta.ID, "name", meta.Name)
	// The id is known only now; it goes last so that no request can
	// claim another session's id (the egress log attributes
	// connections by it).
	env = withSessionID(env, meta.ID)
	spec := launchSpec{Session: meta, Env: env, Rows: req.Rows, Cols: req.Cols, Limits: m.opts.Limits}
	if err := m.launch(ctx, dir, spec); err != nil {
		log.Warn("session launch failed", "err", err)
		now := time.Now().UTC()
		meta.State, meta.Error, meta.EndedAt = api.SessionFailed, err.Error(), &now
		_ = writeMeta(dir, meta)
		return meta, internalf("start session %s: %v", meta.Name, err)
	}
	s, err := m.status(dir)
	if err != nil {
		return api.Session{}, internalf("start session %s: %v", meta.Name, err)
	}
	log.Info("session launched", "state", s.State, "pid", s.PID)
	return s, nil
}

// create picks an id, checks the name, and makes the session's directory
// with its first metadata, all under a lock on the state directory so two
// starts (from two agents, even) cannot take the same name.
func (m *Manager) create(meta *api.Session) (string, error) {
	unlock, err := lockDir(m.opts.Dir)
	if err != nil {
		return "", internalf("%v", err)
	}
	defer unlock()
	existing, err := m.scan()
	if err != nil {
		return "", internalf("list sessions: %v", err)
	}
	for {
		meta.ID = newID()
		if _, err := os.Lstat(filepath.Join(m.opts.Dir, meta.ID)); errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if meta.Name == "" {
		meta.Name = meta.ID
	}
	for _, s := range existing {
		if s.ID == meta.Name {
			return "", conflictf("pick another --name", "session name %q is the id of another session", meta.Name)
		}
		if s.Name == meta.Name && !s.Final() {
			return "", conflictf("pick another --name, or stop the running one", "a session named %q is already %s (id %s)", meta.Name, s.State, s.ID)
		}
	}
	dir := filepath.Join(m.opts.Dir, meta.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", internalf("create session directory: %v", err)
	}
	if err := writeMeta(dir, *meta); err != nil {
		os.RemoveAll(dir)
		return "", internalf("%v", err)
	}
	return dir, nil
}

// lockDir takes an exclusive flock on the state directory's start lock.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".start.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock session directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock session directory: %w", err)
	}
	return func() { f.Close() }, nil
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// launch starts the supervisor, hands it the spec and waits for its
// verdict (the ready pipe's EOF).
func (m *Manager) launch(ctx context.Context, dir string, spec launchSpec) error {
	body, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode launch spec: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, supervisorLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("supervisor log: %w", err)
	}
	defer logf.Close()
	specR, specW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("create pipe: %w", err)
	}
	defer specW.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		specR.Close()
		return fmt.Errorf("create pipe: %w", err)
	}
	defer readyR.Close()
	err = m.opts.Launch(dir, []*os.File{specR, logf, logf, readyW})
	specR.Close()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("start supervisor: %w", err)
	}
	// The spec is small: it fits the pipe, and the supervisor reads it
	// first thing anyway.
	if _, err := specW.Write(body); err != nil {
		return fmt.Errorf("send launch spec: %w", err)
	}
	specW.Close()
	_ = readyR.SetReadDeadline(time.Now().Add(m.opts.Limits.LaunchWindow + launchTimeout))
	stop := context.AfterFunc(ctx, func() { _ = readyR.SetReadDeadline(time.Now()) })
	defer stop()
	if _, err := io.Copy(io.Discard, readyR); err != nil {
		// The caller gave up or the verdict is late; the supervisor runs
		// on regardless and its metadata tells the truth (starting,
		// running or ended), so report that rather than a failure.
		m.log.Info("no launch verdict yet", "dir", dir, "err", err)
		return nil
	}
	meta, err := readMeta(dir)
	if err != nil {
		return fmt.Errorf("read session metadata: %w", err)
	}
	if meta.State == api.SessionStarting {
		return fmt.Errorf("supervisor exited during launch: %s", tailFile(filepath.Join(dir, supervisorLog), 2<<10))
	}
	return nil
}

// tailFile returns the end of a log (at most limit bytes), trimmed, for
// messages.
func tailFile(path string, limit int64) string {
	if _, err := os.Stat(path); err != nil {
		return "(no supervisor log)"
	}
	s := strings.TrimSpace(system.TailFile(path, limit))
	if s == "" {
		return "(supervisor log is empty)"
	}
	return s
}

// commandEnv is the base environment overlaid with the request's.
func (m *Manager) commandEnv(req api.StartSessionRequest) []string {
	env := maps.Clone(m.opts.BaseEnv)
	if env == nil {
		env = map[string]string{}
	}
	if req.PTY {
		env["TERM"] = "xterm-256color"
	}
	maps.Copy(env, req.Env)
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// withSessionID sets agentapi.SessionEnv to id in env, replacing any
// value the request gave it.
func withSessionID(env []string, id string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, agentapi.SessionEnv+"=") {
			out = append(out, kv)
		}
	}
	return append(out, agentapi.SessionEnv+"="+id)
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath resolves name as a shell would, against the session's own PATH
// and cwd (system.LookPathIn), in the words of session errors.
func lookPath(name, pathEnv, dir string) (string, error) {
	p, err := system.LookPathIn(name, pathEnv, dir)
	switch {
	case err == nil:
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p) // the session records where it ran
		}
		return p, nil
	case errors.Is(err, system.ErrNotFound):
		return "", errors.New("not found on PATH")
	case errors.Is(err, syscall.EACCES):
		return "", errors.New("is not executable")
	case errors.Is(err, syscall.ENOENT):
		return "", fs.ErrNotExist
	}
	return "", err
}

// scan reads every session's metadata, oldest first.
func (m *Manager) scan() ([]api.Session, error) {
	ents, err := os.ReadDir(m.opts.Dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []api.Session
	for _, e := range ents {
		if !e.IsDir() || ValidateRef(e.Name()) != nil {
			continue
		}
		s, err := m.status(filepath.Join(m.opts.Dir, e.Name()))
		if err != nil {
			// A directory being created, or debris: not a session.
			continue
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b api.Session) int { return a.StartedAt.Compare(b.StartedAt) })
	return out, nil
}

// status reads a session's metadata and checks that a live session still
// has its supervisor; one that lost it is recorded as lost.
func (m *Manager) status(dir string) (api.Session, error) {
	s, err := readMeta(dir)
	if err != nil {
		return api.Session{}, err
	}
	if s.ID != filepath.Base(dir) {
		return api.Session{}, fmt.Errorf("session metadata in %s names id %q", dir, s.ID)
	}
	if s.Final() || lockHeld(dir) {
		return s, nil
	}
	if s.State == api.SessionStarting && time.Since(s.StartedAt) < m.opts.Limits.LaunchWindow+launchTimeout {
		return s, nil // its supervisor may not hold the lock yet
	}
	// The supervisor writes its final state before it exits and drops
	// the lock: read again before concluding it died.
	if s2, err := readMeta(dir); err == nil && s2.Final() {
		return s2, nil
	}
	now := time.Now().UTC()
	s.State = api.SessionLost
	s.EndedAt = &now
	s.Error = "the session's supervisor is gone (killed?); the command may still run, unsupervised"
	if err := writeMeta(dir, s); err != nil {
		m.log.Warn("record lost session", "session", s.ID, "err", err)
	}
	return s, nil
}

// List returns every session in the state directory, oldest first.
func (m *Manager) List(ctx context.Context) ([]api.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ss, err := m.scan()
	if err != nil {
		return nil, internalf("list sessions: %v", err)
	}
	if ss == nil {
		ss = []api.Session{}
	}
	return ss, nil
}

// Get returns the session ref names: an id, else a name (the live session
// of that name, else its most recent one).
func (m *Manager) Get(ctx context.Context, ref string) (api.Session, error) {
	s, _, err := m.resolve(ctx, ref)
	return s, err
}

func (m *Manager) resolve(ctx context.Context, ref string) (api.Session, string, error) {
	if err := ctx.Err(); err != nil {
		return api.Session{}, "", err
	}
	if err := ValidateRef(ref); err != nil {
		return api.Session{}, "", err
	}
	dir := filepath.Join(m.opts.Dir, ref)
	if s, err := m.status(dir); err == nil {
		return s, dir, nil
	}
	ss, err := m.scan()
	if err != nil {
		return api.Session{}, "", internalf("list sessions: %v", err)
	}
	var found *api.Session
	for i := range ss {
		s := &ss[i]
		if s.Name != ref {
			continue
		}
		// ss is oldest first: a later one wins unless the earlier is live.
		if found == nil || found.Final() {
			found = s
		}
	}
	if found == nil {
		return api.Session{}, "", notFound(ref)
	}
	return *found, filepath.Join(m.opts.Dir, found.ID), nil
}

// call sends one request to a session's supervisor and reads the reply
// line. On success it returns the connection positioned after the reply.
func call(ctx context.Context, dir string, req request) (net.Conn, reply, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(dir, socketFile))
	if err != nil {
		return nil, reply{}, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if err := writeLine(c, req); err != nil {
		c.Close()
		return nil, reply{}, fmt.Errorf("send request: %w", err)
	}
	br := bufio.NewReader(c)
	line, err := readLine(br)
	if err != nil {
		c.Close()
		return nil, reply{}, fmt.Errorf("read reply: %w", err)
	}
	var rep reply
	if err := json.Unmarshal(line, &rep); err != nil {
		c.Close()
		return nil, reply{}, fmt.Errorf("decode reply: %w", err)
	}
	if rep.Error != nil {
		c.Close()
		if rep.Error.Code == api.CodeConflict && strings.Contains(rep.Error.Message, "stdin writer") {
			return nil, rep, &codedError{rep.Error, ErrBusy}
		}
		return nil, rep, rep.Error
	}
	if !stop() {
		c.Close()
		return nil, reply{}, ctx.Err()
	}
	return &bufferedConn{Conn: c, r: br}, rep, nil
}

// supervisorGone reports a dial error that means nobody listens anymore.
func supervisorGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
}

// Attach connects to a session's output (and, with req.Stdin, its
// input). The returned connection speaks internal/mux frames (see
// api.AttachSessionRequest); closing it detaches. A session that has
// ended is replayed from its logs and then sends its exit status.
func (m *Manager) Attach(ctx context.Context, ref string, req api.AttachSessionRequest) (net.Conn, error) {
	if err := validateAttach(req); err != nil {
		return nil, err
	}
	s, dir, err := m.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !s.Final() {
		c, _, err := call(ctx, dir, request{Op: opAttach, Attach: req})
		if err == nil {
			return c, nil
		}
		var ae *api.Error
		if errors.As(err, &ae) || !supervisorGone(err) {
			return nil, err
		}
		// The supervisor ended between reading the metadata and dialing.
		if s, err = m.status(dir); err != nil {
			return nil, internalf("attach %s: %v", ref, err)
		}
		if !s.Final() {
			return nil, api.Errorf(api.CodeUnavailable, "try again", "session %s is %s but its supervisor does not answer", ref, s.State)
		}
	}
	return m.replayFromDisk(s, dir, req)
}

// replayFromDisk serves an ended session's attach from its logs over an
// in-memory pipe, with the same code as a supervisor.
func (m *Manager) replayFromDisk(s api.Session, dir string, req api.AttachSessionRequest) (net.Conn, error) {
	names, types := []string{stdoutLog, stderrLog}, []mux.Type{mux.Stdout, mux.Stderr}
	if s.Mode == api.SessionModePTY {
		names, types = []string{outputLog}, []mux.Type{mux.Stdout}
	}
	var logs []*streamLog
	closeLogs := func() {
		for _, l := range logs {
			l.closeFiles()
		}
	}
	for _, n := range names {
		l, err := openDiskLog(filepath.Join(dir, n))
		if err != nil {
			closeLogs()
			return nil, internalf("attach %s: %v", s.Name, err)
		}
		logs = append(logs, l)
	}
	st := api.ExitStatus{Code: 255, Error: "session " + s.State}
	if s.Exit != nil {
		st = *s.Exit
	} else if s.Error != "" {
		st.Error = s.Error
	}
	client, server := net.Pipe()
	go func() {
		defer closeLogs()
		defer server.Close()
		cursors := startCursors(logs, req, func() {})
		gone := make(chan struct{})
		go func() {
			defer close(gone)
			r := mux.NewReader(server)
			for {
				if _, err := r.ReadFrame(); err != nil {
					return
				}
			}
		}()
		done := make(chan struct{})
		close(done)
		_ = sendOutput(server, logs, types, cursors, gone, done, func() api.ExitStatus { return st })
	}()
	return client, nil
}

// Signal sends sig to a running session's process group.
func (m *Manager) Signal(ctx context.Context, ref string, sig int) error {
	if sig < 1 || sig > mux.MaxSignal {
		return invalidf("", "signal %d out of range 1..%d", sig, mux.MaxSignal)
	}
	s, dir, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	if s.Final() {
		return conflictf("", "session %s is %s", ref, s.State)
	}
	c, _, err := call(ctx, dir, request{Op: opSignal, Signal: sig})
	if err != nil {
		if supervisorGone(err) {
			return conflictf("", "session %s has ended", ref)
		}
		return err
	}
	c.Close()
	return nil
}

// Stop sends SIGTERM to a session's process group, SIGKILL after timeout
// (DefaultStopTimeout when zero), and returns the session once it ended.
// The supervisor enforces the KILL even if the caller goes away.
func (m *Manager) Stop(ctx context.Context, ref string, timeout time.Duration) (api.Session, error) {
	if timeout < 0 {
		return api.Session{}, invalidf("", "negative stop timeout")
	}
	if timeout == 0 {
		timeout = DefaultStopTimeout
	}
	s, dir, err := m.resolve(ctx, ref)
	if err != nil || s.Final() {
		return s, err
	}
	c, rep, err := call(ctx, dir, request{Op: opStop, TimeoutMS: timeout.Milliseconds()})
	if err != nil {
		if supervisorGone(err) {
			return m.status(dir)
		}
		return api.Session{}, err
	}
	c.Close()
	if rep.Session == nil {
		return m.status(dir)
	}
	return *rep.Session, nil
}

// Remove deletes an ended session's directory and logs.
func (m *Manager) Remove(ctx context.Context, ref string) error {
	s, dir, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	if !s.Final() {
		return conflictf("stop it first", "session %s is %s", ref, s.State)
	}
	if err := os.RemoveAll(dir); err != nil {
		return internalf("remove session %s: %v", ref, err)
	}
	return nil
}

// Logs writes one stream of a session's output to w: what the logs hold
// (or its last req.Tail lines), and with req.Follow live output until the
// session ends or ctx does.
func (m *Manager) Logs(ctx context.Context, ref string, req api.SessionLogsRequest, w io.Writer) error {
	want := mux.Stdout
	switch req.Stream {
	case "", api.SessionStreamStdout:
	case api.SessionStreamStderr:
		want = mux.Stderr
	default:
		return invalidf("use stdout or stderr", "unknown stream %q", req.Stream)
	}
	if req.Tail < 0 {
		return invalidf("", "tail must not be negative")
	}
	s, dir, err := m.resolve(ctx, ref)
	if err != nil {
		return err
	}
	if s.Mode == api.SessionModePTY && want == mux.Stderr {
		return invalidf("a terminal has one output: read stdout", "session %s runs on a terminal: it has no separate stderr", ref)
	}
	areq := api.AttachSessionRequest{FromStart: req.Tail == 0, Tail: req.Tail}
	var conn net.Conn
	if req.Follow {
		conn, err = m.Attach(ctx, ref, areq)
	} else {
		// Without follow the answer is what the logs hold now.
		conn, err = m.replayFromDisk(api.Session{Mode: s.Mode, Name: s.Name, State: s.State}, dir, areq)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	r := mux.NewReader(conn)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read session output: %w", err)
		}
		switch f.Type {
		case want:
			if _, err := w.Write(f.Payload); err != nil {
				return err
			}
		case mux.Exit:
			return nil
		}
	}
}
