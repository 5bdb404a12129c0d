package system

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Runner runs external commands. Implementations: Exec (the real one) and
// Fake (for unit tests).
type Runner interface {
	// Run runs name with args and returns its standard output. On failure
	// the error is a *CmdError carrying the tail of stdout+stderr.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// RunIn is Run with a working directory, extra environment, stdin and
	// optional streaming of output.
	RunIn(ctx context.Context, opts RunOpts, name string, args ...string) ([]byte, error)
}

// RunOpts tunes one command run.
type RunOpts struct {
	// Dir is the working directory; empty means the daemon's.
	Dir string
	// Env holds extra "KEY=value" entries added after the inherited
	// environment and LC_ALL=C, so they win over both.
	Env []string
	// Stdin feeds the command; nil means /dev/null.
	Stdin io.Reader
	// Stdout, when set, receives stdout as it is produced (for long
	// commands such as mmdebstrap) and Run then returns no output bytes.
	Stdout io.Writer
	// Stderr, when set, receives stderr as it is produced.
	Stderr io.Writer
	// MaxStdout (> 0) caps the stdout Run returns: a command printing
	// more is killed and fails with ErrOutputTooLarge. For output an
	// image or a guest controls (debugfs cat of an image's file).
	MaxStdout int64
}

// ErrOutputTooLarge means a command printed more than RunOpts.MaxStdout.
var ErrOutputTooLarge = errors.New("command output exceeds the limit")

// outputTail bounds how much command output an error carries: enough to
// show the real failure, small enough to log and send over the API.
const outputTail = 4 << 10

// waitDelay bounds how long Run waits for output pipes after the command
// exits or is killed, so a grandchild holding the pipe cannot hang us.
const waitDelay = 5 * time.Second

// CmdError is the error of a failed command.
type CmdError struct {
	Argv     []string
	Output   string // tail of combined stdout and stderr
	ExitCode int    // -1 when the command did not exit normally
	Err      error
}

func (e *CmdError) Error() string {
	var b strings.Builder
	b.WriteString("run ")
	b.WriteString(QuoteArgv(e.Argv))
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if out := strings.TrimSpace(e.Output); out != "" {
		b.WriteString(": ")
		b.WriteString(out)
	}
	return b.String()
}

func (e *CmdError) Unwrap() error { return e.Err }

// Exec is the real Runner. The zero value is ready to use.
type Exec struct {
	// Logger, when set, gets one debug record per command.
	Logger *slog.Logger
}

// Default is the Runner production code uses.
var Default Runner = Exec{}

var _ Runner = Exec{}

// Run implements Runner.
func (x Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return x.RunIn(ctx, RunOpts{}, name, args...)
}

// RunIn implements Runner.
func (x Exec) RunIn(ctx context.Context, opts RunOpts, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	// A capped run kills the command through its own context once it
	// prints too much, so it cannot keep the daemon busy either.
	runCtx := ctx
	var capped *capBuffer
	if opts.MaxStdout > 0 && opts.Stdout == nil {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithCancel(ctx)
		defer cancel()
		capped = &capBuffer{max: opts.MaxStdout, over: cancel}
	}
	cmd := exec.CommandContext(runCtx, name, args...)
	cmd.Dir = opts.Dir
	// LC_ALL=C keeps tool output parseable and error text greppable
	// whatever locale the daemon was started under.
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), opts.Env...)
	cmd.Stdin = opts.Stdin
	cmd.WaitDelay = waitDelay

	tail := &tailBuffer{max: outputTail}
	var stdout strings.Builder
	switch {
	case opts.Stdout != nil:
		cmd.Stdout = io.MultiWriter(opts.Stdout, tail)
	case capped != nil:
		cmd.Stdout = io.MultiWriter(capped, tail)
	default:
		cmd.Stdout = io.MultiWriter(&stdout, tail)
	}
	if opts.Stderr != nil {
		cmd.Stderr = io.MultiWriter(opts.Stderr, tail)
	} else {
		cmd.Stderr = tail
	}

	start := time.Now()
	err := cmd.Run()
	if x.Logger != nil {
		x.Logger.LogAttrs(ctx, slog.LevelDebug, "run command",
			slog.String("argv", QuoteArgv(argv)),
			slog.Duration("took", time.Since(start)),
			slog.Any("err", err))
	}
	var out []byte
	switch {
	case capped != nil:
		out = capped.buf
		if capped.exceeded {
			return nil, &CmdError{Argv: argv, Output: tail.String(), ExitCode: -1,
				Err: fmt.Errorf("%w: more than %d bytes", ErrOutputTooLarge, opts.MaxStdout)}
		}
	case opts.Stdout == nil:
		out = []byte(stdout.String())
	}
	if err == nil {
		return out, nil
	}
	ce := &CmdError{Argv: argv, Output: tail.String(), ExitCode: -1, Err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ce.ExitCode = ee.ExitCode()
	}
	// A kill by the context shows up as "signal: killed"; keep the
	// context's error reachable so callers can tell a timeout apart.
	if ctxErr := ctx.Err(); ctxErr != nil {
		ce.Err = fmt.Errorf("%w: %w", ctxErr, err)
	}
	return out, ce
}

// LookPath finds an executable in $PATH. A missing one matches
// ErrNotFound.
func LookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", name, err)
	}
	return p, nil
}

// QuoteArgv renders argv as one shell-like line: arguments that need it
// are single-quoted, everything else is left bare so the common case
// reads naturally ("qemu-img create -f qcow2 disk.qcow2 4G").
func QuoteArgv(argv []string) string {
	parts := make([]string, len(argv))
	for i, a := range argv {
		parts[i] = quoteArg(a)
	}
	return strings.Join(parts, " ")
}

func quoteArg(s string) string {
	if s == "" {
		return "''"
	}
	if strings.IndexFunc(s, needsQuote) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func needsQuote(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return false
	}
	return !strings.ContainsRune("-_./=:,+@%^", r)
}

// tailBuffer keeps the last max bytes written to it. stdout and stderr
// copy goroutines write concurrently, hence the mutex.
type tailBuffer struct {
	mu        sync.Mutex
	max       int
	buf       []byte
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		t.truncated = true
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.truncated = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.truncated {
		return "..." + string(t.buf)
	}
	return string(t.buf)
}

// capBuffer keeps stdout up to max bytes; past that it drops the rest
// and calls over (which kills the command). Only the stdout copy
// goroutine writes to it.
type capBuffer struct {
	max      int64
	buf      []byte
	exceeded bool
	over     func()
}

func (c *capBuffer) Write(p []byte) (int, error) {
	if c.exceeded {
		return len(p), nil
	}
	if int64(len(c.buf))+int64(len(p)) > c.max {
		c.exceeded = true
		c.buf = nil
		c.over()
		return len(p), nil
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}
