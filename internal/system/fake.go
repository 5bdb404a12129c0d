package system

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Fake is a Runner for unit tests. It records every command rendered as
// one line ("qemu-img create -f qcow2 root.qcow2 4G") and answers from
// scripted responses, so tests assert on the commands a component would
// have run without running them. The zero value answers every command
// with empty output and no error.
type Fake struct {
	// Handler, when set, answers commands no scripted response matched.
	// Tests that need state (a fake "ip link" that remembers links) put
	// it here.
	Handler func(ctx context.Context, call FakeCall) ([]byte, error)
	// Strict makes an unmatched command fail instead of succeeding.
	Strict bool

	mu     sync.Mutex
	calls  []FakeCall
	once   []fakeResponse
	sticky []fakeResponse
}

// FakeCall is one recorded command.
type FakeCall struct {
	Cmd   string   // rendered with QuoteArgv
	Argv  []string // name followed by args
	Dir   string
	Env   []string
	Stdin []byte // everything RunOpts.Stdin yielded
	// MaxStdout is RunOpts.MaxStdout; output over it fails the call the
	// way the real runner does.
	MaxStdout int64
}

type fakeResponse struct {
	prefix string
	out    []byte
	err    error
}

var _ Runner = (*Fake)(nil)

// On answers every command whose rendered line starts with prefix. When
// several match, the longest prefix wins, then the latest registered.
func (f *Fake) On(prefix, output string, err error) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sticky = append(f.sticky, fakeResponse{prefix, []byte(output), err})
	return f
}

// Once answers the next matching command only. Once responses are tried
// before On responses, in the order they were registered.
func (f *Fake) Once(prefix, output string, err error) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.once = append(f.once, fakeResponse{prefix, []byte(output), err})
	return f
}

// Fail makes commands matching prefix fail the way the real runner
// would: a *CmdError with the given exit code and output.
func (f *Fake) Fail(prefix, output string, exitCode int) *Fake {
	return f.On(prefix, "", &fakeExit{output: output, code: exitCode})
}

// fakeExit is turned into a *CmdError naming the actual argv at call time.
type fakeExit struct {
	output string
	code   int
}

func (e *fakeExit) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Calls returns the recorded commands in order.
func (f *Fake) Calls() []FakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FakeCall(nil), f.calls...)
}

// Commands returns the rendered command lines in order.
func (f *Fake) Commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmds := make([]string, len(f.calls))
	for i, c := range f.calls {
		cmds[i] = c.Cmd
	}
	return cmds
}

// Reset forgets recorded calls and scripted responses.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls, f.once, f.sticky = nil, nil, nil
}

// Run implements Runner.
func (f *Fake) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return f.RunIn(ctx, RunOpts{}, name, args...)
}

// RunIn implements Runner.
func (f *Fake) RunIn(ctx context.Context, opts RunOpts, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	call := FakeCall{
		Cmd:  QuoteArgv(argv),
		Argv: argv,
		Dir:  opts.Dir,
		Env:  append([]string(nil), opts.Env...),

		MaxStdout: opts.MaxStdout,
	}
	if opts.Stdin != nil {
		b, err := io.ReadAll(opts.Stdin)
		if err != nil {
			return nil, fmt.Errorf("fake read stdin: %w", err)
		}
		call.Stdin = b
	}
	if err := ctx.Err(); err != nil {
		return nil, &CmdError{Argv: argv, ExitCode: -1, Err: err}
	}

	f.mu.Lock()
	f.calls = append(f.calls, call)
	resp, ok := f.match(call.Cmd)
	handler, strict := f.Handler, f.Strict
	f.mu.Unlock()

	var out []byte
	var err error
	switch {
	case ok:
		out, err = resp.out, resp.err
	case handler != nil:
		out, err = handler(ctx, call)
	case strict:
		err = &CmdError{Argv: argv, ExitCode: -1, Err: fmt.Errorf("fake: no response scripted for %q", call.Cmd)}
	}
	if fe, isExit := err.(*fakeExit); isExit {
		err = &CmdError{Argv: argv, Output: fe.output, ExitCode: fe.code, Err: fe}
	}
	if opts.MaxStdout > 0 && opts.Stdout == nil && int64(len(out)) > opts.MaxStdout {
		return nil, &CmdError{Argv: argv, ExitCode: -1, Err: fmt.Errorf("%w: more than %d bytes", ErrOutputTooLarge, opts.MaxStdout)}
	}
	if opts.Stdout != nil && len(out) > 0 {
		if _, werr := opts.Stdout.Write(out); werr != nil && err == nil {
			err = werr
		}
		out = nil
	}
	return out, err
}

// match must be called with f.mu held.
func (f *Fake) match(cmd string) (fakeResponse, bool) {
	for i, r := range f.once {
		if strings.HasPrefix(cmd, r.prefix) {
			f.once = append(f.once[:i], f.once[i+1:]...)
			return r, true
		}
	}
	best := -1
	for i, r := range f.sticky {
		if strings.HasPrefix(cmd, r.prefix) && (best < 0 || len(r.prefix) >= len(f.sticky[best].prefix)) {
			best = i
		}
	}
	if best < 0 {
		return fakeResponse{}, false
	}
	return f.sticky[best], true
}
