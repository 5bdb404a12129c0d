package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
)

func TestDecodeJSON(t *testing.T) {
	cases := []struct {
		body string
		ok   bool
		want string
	}{
		{`{"name":"a1","cpus":2}`, true, ""},
		{``, false, "empty request body"},
		{`{"name":`, false, "malformed"},
		{`{"cpus":"two"}`, false, "malformed"},
		{`{"bogus":1}`, false, "unknown field"},
		{`{"name":"a"} {"name":"b"}`, false, "trailing data"},
		{`[1,2]`, false, "malformed"},
	}
	for _, tc := range cases {
		var req api.CreateVMRequest
		err := DecodeJSON(strings.NewReader(tc.body), &req)
		if tc.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: got %v, want ok=%v %q", tc.body, err, tc.ok, tc.want)
		}
		var ae *api.Error
		if err != nil && (!errors.As(err, &ae) || ae.Code != api.CodeInvalid) {
			t.Errorf("%q: error is not an invalid-input api.Error: %v", tc.body, err)
		}
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"name":"a1"}`, `{"argv":["sh","-c","x"],"tty":true}`, `{`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c api.CreateVMRequest
		_ = DecodeJSON(bytes.NewReader(b), &c)
		var e api.ExecRequest
		_ = DecodeJSON(bytes.NewReader(b), &e)
	})
}

// TestOperationWatch runs an operation against a real SQLite store and
// checks that a watcher sees every stage once, in order, then the end,
// and that a late watcher replays the same from the record.
func TestOperationWatch(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ops := newOperations(ctx, st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	release := make(chan struct{})
	id, err := ops.start(ctx, "test", "x", func(ctx context.Context, stage stageFunc) (any, error) {
		if err := stage("one", func(context.Context) error { <-release; return nil }); err != nil {
			return nil, err
		}
		return nil, stage("two", func(context.Context) error { return errors.New("boom") })
	})
	if err != nil {
		t.Fatal(err)
	}
	events, cancel, err := ops.watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	close(release)
	var seen []string
	var final *api.Operation
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case ev, ok := <-events:
			if !ok {
				done = true
				break
			}
			if ev.Stage != nil {
				seen = append(seen, ev.Stage.Name+":"+ev.Stage.State)
			}
			if ev.Done {
				final = ev.Operation
			}
		case <-timeout:
			t.Fatalf("watch did not finish; saw %v", seen)
		}
	}
	want := "one:running one:succeeded two:running two:failed"
	if strings.Join(seen, " ") != want {
		t.Fatalf("stages: got %v, want %s", seen, want)
	}
	if final == nil || final.State != api.OpFailed || final.Error != "boom" {
		t.Fatalf("final: %+v", final)
	}
	late, cancel2, err := ops.watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel2()
	var lateSeen []string
	for ev := range late {
		if ev.Stage != nil {
			lateSeen = append(lateSeen, ev.Stage.Name+":"+ev.Stage.State)
		}
	}
	if strings.Join(lateSeen, " ") != "one:succeeded two:failed" {
		t.Fatalf("late watcher: %v", lateSeen)
	}
}
