package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/bangerdev/banger/api"
)

// RunExec drives the client end of an exec stream (after the 101 answer):
// it copies stdin into Stdin frames followed by StdinClose, forwards resize
// and signal requests, writes Stdout and Stderr frames to stdout and
// stderr, and returns the status of the Exit frame.
//
// A nil stdin sends StdinClose at once; nil stdout or stderr discard;
// nil resize or signals channels are never read. Cancelling ctx closes
// conn, which the agent takes as "kill the command". The caller still owns
// conn and closes it afterwards. Reading stdin happens on a goroutine that
// may stay blocked in stdin.Read after RunExec returns (a terminal cannot
// be interrupted); it ends at the next read once conn is closed.
func RunExec(ctx context.Context, conn io.ReadWriteCloser, stdin io.Reader, stdout, stderr io.Writer, resize <-chan [2]uint16, signals <-chan int) (api.ExitStatus, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	w := NewWriter(conn)
	done := make(chan struct{})
	defer close(done)
	stop := context.AfterFunc(ctx, func() {
		// Some streams (yamux) keep reads blocked after Close; a deadline
		// wakes them.
		if d, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
			_ = d.SetDeadline(time.Now())
		}
		conn.Close()
	})
	defer stop()

	go func() {
		if stdin != nil {
			_, _ = io.Copy(w.Stream(Stdin), stdin)
		}
		// A failed stdin ends in StdinClose too: the command should see EOF
		// rather than wait forever. On a closed conn this fails harmlessly.
		_ = w.WriteStdinClose()
	}()
	go func() {
		for {
			select {
			case <-done:
				return
			case sz := <-resize:
				if w.WriteResize(sz[0], sz[1]) != nil {
					return
				}
			case sig := <-signals:
				if sig < 1 || sig > MaxSignal {
					continue
				}
				if w.WriteSignal(sig) != nil {
					return
				}
			}
		}
	}()

	r := NewReader(conn)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			if ctx.Err() != nil {
				return api.ExitStatus{}, ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return api.ExitStatus{}, errors.New("exec stream ended without an exit status")
			}
			return api.ExitStatus{}, fmt.Errorf("read exec stream: %w", err)
		}
		switch f.Type {
		case Stdout:
			if _, err := stdout.Write(f.Payload); err != nil {
				return api.ExitStatus{}, fmt.Errorf("write stdout: %w", err)
			}
		case Stderr:
			if _, err := stderr.Write(f.Payload); err != nil {
				return api.ExitStatus{}, fmt.Errorf("write stderr: %w", err)
			}
		case Exit:
			return DecodeExit(f.Payload)
		default:
			return api.ExitStatus{}, fmt.Errorf("read exec stream: unexpected %s frame from the agent", f.Type)
		}
	}
}
