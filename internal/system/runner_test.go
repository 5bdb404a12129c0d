package system

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestExecRun(t *testing.T) {
	tests := []struct {
		name     string
		opts     RunOpts
		argv     []string
		want     string
		wantCode int // 0 means success expected
		wantErr  []string
	}{
		{name: "stdout only", argv: []string{"sh", "-c", "echo out; echo err >&2"}, want: "out\n"},
		{name: "locale is C", argv: []string{"sh", "-c", "echo $LC_ALL"}, want: "C\n"},
		{name: "extra env", opts: RunOpts{Env: []string{"BANGER_X=1"}}, argv: []string{"sh", "-c", "echo $BANGER_X"}, want: "1\n"},
		{name: "dir", opts: RunOpts{Dir: "/"}, argv: []string{"pwd"}, want: "/\n"},
		{name: "stdin", opts: RunOpts{Stdin: strings.NewReader("hello")}, argv: []string{"cat"}, want: "hello"},
		{
			name:     "failure carries argv, code and output",
			argv:     []string{"sh", "-c", "echo boom >&2; exit 3"},
			wantCode: 3,
			wantErr:  []string{"run sh -c 'echo boom >&2; exit 3'", "exit status 3", "boom"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Exec{}.RunIn(context.Background(), tt.opts, tt.argv[0], tt.argv[1:]...)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("RunIn: %v", err)
				}
				if string(out) != tt.want {
					t.Fatalf("output = %q, want %q", out, tt.want)
				}
				return
			}
			var ce *CmdError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v (%T), want *CmdError", err, err)
			}
			if ce.ExitCode != tt.wantCode {
				t.Errorf("ExitCode = %d, want %d", ce.ExitCode, tt.wantCode)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestExecStreaming(t *testing.T) {
	var stdout, stderr bytes.Buffer
	out, err := Exec{}.RunIn(context.Background(), RunOpts{Stdout: &stdout, Stderr: &stderr},
		"sh", "-c", "echo progress; echo warn >&2")
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Errorf("streamed run returned %q, want nothing", out)
	}
	if stdout.String() != "progress\n" || stderr.String() != "warn\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

func TestExecNotFound(t *testing.T) {
	_, err := Exec{}.Run(context.Background(), "banger-no-such-command")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	var ce *CmdError
	if !errors.As(err, &ce) || ce.ExitCode != -1 {
		t.Fatalf("err = %#v, want *CmdError with ExitCode -1", err)
	}
	if _, err := LookPath("banger-no-such-command"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookPath err = %v, want ErrNotFound", err)
	}
	if p, err := LookPath("sh"); err != nil || p == "" {
		t.Fatalf("LookPath(sh) = %q, %v", p, err)
	}
}

func TestExecContextTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Exec{}.Run(ctx, "sleep", "10")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("command was not killed on context expiry")
	}
}

func TestExecOutputTail(t *testing.T) {
	_, err := Exec{}.Run(context.Background(), "sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; exit 1")
	var ce *CmdError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	if len(ce.Output) > outputTail+3 {
		t.Errorf("output tail is %d bytes, want at most %d", len(ce.Output), outputTail+3)
	}
	if !strings.HasSuffix(ce.Output, "line1999\n") || !strings.HasPrefix(ce.Output, "...") {
		t.Errorf("output tail does not end with the last line: %q", ce.Output[len(ce.Output)-20:])
	}
}

func TestTailBuffer(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{"fits", []string{"ab", "cd"}, "abcd"},
		{"exact", []string{"abcde"}, "abcde"},
		{"drops head", []string{"abc", "def"}, "...bcdef"},
		{"one big write", []string{"0123456789"}, "...56789"},
		{"big after small", []string{"xy", "0123456"}, "...23456"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := &tailBuffer{max: 5}
			for _, w := range tt.writes {
				if n, err := tb.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if got := tb.String(); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestQuoteArgv(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"qemu-img", "create", "-f", "qcow2", "/v/root.qcow2", "4G"}, "qemu-img create -f qcow2 /v/root.qcow2 4G"},
		{[]string{"ip", "addr", "add", "10.0.0.1/24", "dev", "bg1a2b3c0"}, "ip addr add 10.0.0.1/24 dev bg1a2b3c0"},
		{[]string{"sh", "-c", "echo hi"}, "sh -c 'echo hi'"},
		{[]string{"echo", ""}, "echo ''"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"-o", "key=value,other"}, "-o key=value,other"},
	}
	for _, tt := range tests {
		if got := QuoteArgv(tt.argv); got != tt.want {
			t.Errorf("QuoteArgv(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}

// Output over MaxStdout kills the command and fails the run instead of
// filling the daemon's memory.
func TestRunMaxStdout(t *testing.T) {
	ctx := context.Background()
	out, err := Exec{}.RunIn(ctx, RunOpts{MaxStdout: 1 << 10}, "head", "-c", "1048576", "/dev/zero")
	if !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("want ErrOutputTooLarge, got %v", err)
	}
	if len(out) > 1<<10 {
		t.Fatalf("returned %d bytes over the cap", len(out))
	}
	out, err = Exec{}.RunIn(ctx, RunOpts{MaxStdout: 5}, "printf", "12345")
	if err != nil || string(out) != "12345" {
		t.Fatalf("output at the cap: %q %v", out, err)
	}
}

func TestFakeMaxStdout(t *testing.T) {
	f := (&Fake{}).On("cat", "123456", nil)
	if _, err := f.RunIn(context.Background(), RunOpts{MaxStdout: 5}, "cat", "x"); !errors.Is(err, ErrOutputTooLarge) {
		t.Fatalf("want ErrOutputTooLarge, got %v", err)
	}
}
