package client_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/client"
)

// newFake starts the fake daemon with VM "work" created.
func newFake(t *testing.T) (*fakeDaemon, *client.Client) {
	t.Helper()
	f := startFakeDaemon()
	t.Cleanup(f.stop)
	c := client.New(f.socket)
	if _, err := c.CreateVM(context.Background(), api.CreateVMRequest{Name: "work"}); err != nil {
		t.Fatal(err)
	}
	return f, c
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != code {
		t.Fatalf("err = %v (%T), want an *api.Error with code %s", err, err, code)
	}
}

func TestRun(t *testing.T) {
	f, c := newFake(t)
	ctx := context.Background()

	t.Run("output and status", func(t *testing.T) {
		var out, errb bytes.Buffer
		st, err := c.Run(ctx, "work", api.ExecRequest{Argv: []string{"echo", "hi", "there"}}, nil, &out, &errb)
		if err != nil || st.Code != 0 || out.String() != "hi there\n" || errb.Len() != 0 {
			t.Fatalf("Run = %+v, %v; stdout %q stderr %q", st, err, out.String(), errb.String())
		}
		if f.lastExec().Stdin {
			t.Fatal("a nil stdin asked for stdin")
		}
	})
	t.Run("stdin reaches the command", func(t *testing.T) {
		var out bytes.Buffer
		st, err := c.Run(ctx, "work", api.ExecRequest{Argv: []string{"cat"}}, strings.NewReader("from the host\n"), &out, nil)
		if err != nil || st.Code != 0 || out.String() != "from the host\n" {
			t.Fatalf("Run = %+v, %v; stdout %q", st, err, out.String())
		}
		if !f.lastExec().Stdin {
			t.Fatal("a stdin reader did not set req.Stdin")
		}
	})
	t.Run("a failing command is a status, not an error", func(t *testing.T) {
		var errb bytes.Buffer
		st, err := c.Run(ctx, "work", api.ExecRequest{Argv: []string{"false"}}, nil, nil, &errb)
		if err != nil || st.Code != 1 || !strings.Contains(errb.String(), "failing on purpose") {
			t.Fatalf("Run = %+v, %v; stderr %q", st, err, errb.String())
		}
		st, err = c.Run(ctx, "work", api.ExecRequest{Argv: []string{"nope"}}, nil, nil, nil)
		if err != nil || st.Code != 127 || st.Error == "" {
			t.Fatalf("Run of a missing command = %+v, %v", st, err)
		}
	})
	t.Run("refusals are api errors", func(t *testing.T) {
		_, err := c.Run(ctx, "gone", api.ExecRequest{Argv: []string{"echo"}}, nil, nil, nil)
		wantCode(t, err, api.CodeNotFound)
		_, err = c.Run(ctx, "work", api.ExecRequest{}, nil, nil, nil)
		wantCode(t, err, api.CodeInvalid)
	})
	t.Run("cancel drops the command", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := c.Run(ctx, "work", api.ExecRequest{Argv: []string{"sleep", "1000"}}, nil, nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the context's", err)
		}
		select {
		case <-f.dropped:
		case <-time.After(5 * time.Second):
			t.Fatal("the guest side never saw the connection go")
		}
	})
}

func TestFollowSession(t *testing.T) {
	f, c := newFake(t)
	ctx := context.Background()

	t.Run("replay then exit", func(t *testing.T) {
		var out bytes.Buffer
		st, err := c.FollowSession(ctx, "work", "job", api.AttachSessionRequest{FromStart: true}, nil, &out, nil)
		if err != nil || st.Code != 0 || out.String() != sessionOutput {
			t.Fatalf("FollowSession = %+v, %v; stdout %q", st, err, out.String())
		}
		if f.lastAttach().Stdin {
			t.Fatal("following without stdin asked to be the stdin writer")
		}
	})
	t.Run("cancel detaches", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		out := &notifyWriter{wrote: make(chan struct{}, 1)}
		done := make(chan error, 1)
		go func() {
			_, err := c.FollowSession(ctx, "work", "live", api.AttachSessionRequest{FromStart: true}, nil, out, nil)
			done <- err
		}()
		select {
		case <-out.wrote:
		case <-time.After(5 * time.Second):
			t.Fatal("no output from a live session")
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("FollowSession did not return after cancel")
		}
		select {
		case <-f.dropped:
		case <-time.After(5 * time.Second):
			t.Fatal("the guest side never saw the client detach")
		}
	})
	t.Run("unknown session", func(t *testing.T) {
		_, err := c.FollowSession(ctx, "work", "nope", api.AttachSessionRequest{}, nil, nil, nil)
		wantCode(t, err, api.CodeNotFound)
	})
}

type notifyWriter struct{ wrote chan struct{} }

func (w *notifyWriter) Write(p []byte) (int, error) {
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return len(p), nil
}

// DefaultSocket looks where the CLI looks: BANGER_SOCKET first, then the
// instance BANGER_HOME selects.
func TestDefaultSocket(t *testing.T) {
	t.Setenv("BANGER_SOCKET", "")
	t.Setenv("BANGER_HOME", "/srv/banger")
	if got := client.DefaultSocket(); got != "/srv/banger/banger.sock" {
		t.Fatalf("with BANGER_HOME: %s", got)
	}
	t.Setenv("BANGER_SOCKET", "/tmp/b.sock")
	if got := client.DefaultSocket(); got != "/tmp/b.sock" {
		t.Fatalf("with BANGER_SOCKET: %s", got)
	}
}
