package mux

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// A scripted agent end checks what RunExec sends and answers.
func TestRunExec(t *testing.T) {
	client, agent := net.Pipe()
	defer client.Close()
	defer agent.Close()

	got := make(chan []Frame, 1)
	go func() {
		r := NewReader(agent)
		w := NewWriter(agent)
		var frames []Frame
		for {
			f, err := r.ReadFrame()
			if err != nil {
				got <- frames
				return
			}
			frames = append(frames, f)
			if f.Type == Signal {
				break
			}
		}
		got <- frames
		w.Stream(Stdout).Write([]byte("out"))
		w.Stream(Stderr).Write([]byte("err"))
		w.WriteExit(api.ExitStatus{Code: 130, Signal: 2})
		io.Copy(io.Discard, agent)
	}()

	resize := make(chan [2]uint16, 1)
	signals := make(chan int, 1)
	resize <- [2]uint16{30, 100}
	var stdout, stderr bytes.Buffer
	go func() {
		// The signal goes after stdin so the fake agent sees a fixed order.
		time.Sleep(50 * time.Millisecond)
		signals <- 2
	}()
	st, err := RunExec(context.Background(), client, strings.NewReader("input"), &stdout, &stderr, resize, signals)
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 130 || st.Signal != 2 {
		t.Fatalf("status %+v", st)
	}
	if stdout.String() != "out" || stderr.String() != "err" {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	frames := <-got
	var stdin []byte
	seen := map[Type]bool{}
	for _, f := range frames {
		seen[f.Type] = true
		switch f.Type {
		case Stdin:
			stdin = append(stdin, f.Payload...)
		case Resize:
			if r, c, _ := DecodeResize(f.Payload); r != 30 || c != 100 {
				t.Errorf("resize %dx%d", r, c)
			}
		case Signal:
			if s, _ := DecodeSignal(f.Payload); s != 2 {
				t.Errorf("signal %d", s)
			}
		}
	}
	if string(stdin) != "input" || !seen[StdinClose] || !seen[Resize] || !seen[Signal] {
		t.Fatalf("agent saw stdin %q and %v", stdin, seen)
	}
}

func TestRunExecErrors(t *testing.T) {
	tests := []struct {
		name  string
		agent func(w *Writer, c net.Conn)
		want  string
	}{
		{"eof before exit", func(w *Writer, c net.Conn) {
			w.Stream(Stdout).Write([]byte("x"))
			c.Close()
		}, "without an exit status"},
		{"bad frame", func(w *Writer, c net.Conn) {
			c.Write(header(42, 0))
		}, "unknown frame type"},
		{"stdin from agent", func(w *Writer, c net.Conn) {
			w.WriteFrame(Stdin, []byte("x"))
		}, "unexpected stdin frame"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, agent := net.Pipe()
			defer client.Close()
			defer agent.Close()
			go io.Copy(io.Discard, agent)
			go tt.agent(NewWriter(agent), agent)
			_, err := RunExec(context.Background(), client, nil, nil, nil, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestRunExecCancel(t *testing.T) {
	client, agent := net.Pipe()
	defer agent.Close()
	go io.Copy(io.Discard, agent)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := RunExec(ctx, client, nil, nil, nil, nil, nil)
	if err != context.DeadlineExceeded {
		t.Fatalf("got %v", err)
	}
}
