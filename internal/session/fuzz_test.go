package session

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// FuzzDecodeStartRequest: whatever the decoder accepts is a request the
// preflight can use as is: a valid name, a non-empty argv and env without
// NULs, an absolute cwd, and it survives a JSON round trip unchanged.
func FuzzDecodeStartRequest(f *testing.F) {
	for _, s := range []string{
		`{"argv":["sleep","60"],"name":"nap"}`,
		`{"argv":["sh","-c","echo hi"],"cwd":"/root","env":{"A":"1"},"pty":true,"rows":24,"cols":80}`,
		`{"argv":[]}`,
		`{"argv":["x"],"name":"../x"}`,
		`{"argv":["x"],"env":{"A=B":"1"}}`,
		`{"argv":["x\u0000"]}`,
		`{"argv":["x"],"cwd":"rel"}`,
		`{"argv":["x"]} {}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeStartRequest(bytes.NewReader(b))
		if err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeInvalid {
				t.Fatalf("error without the invalid code: %v", err)
			}
			return
		}
		if len(req.Argv) == 0 || req.Argv[0] == "" {
			t.Fatalf("accepted empty argv: %q", b)
		}
		if req.Name != "" && !namePattern.MatchString(req.Name) {
			t.Fatalf("accepted name %q", req.Name)
		}
		if req.Cwd != "" && !filepath.IsAbs(req.Cwd) {
			t.Fatalf("accepted cwd %q", req.Cwd)
		}
		for k, v := range req.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
				t.Fatalf("accepted env %q=%q", k, v)
			}
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		req2, err := DecodeStartRequest(bytes.NewReader(again))
		if err != nil || !reflect.DeepEqual(req, req2) {
			t.Fatalf("round trip: %+v → %s → %+v, %v", req, again, req2, err)
		}
	})
}

// FuzzDecodeRequest covers the supervisor socket's request line, read
// the way the supervisor reads it.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"attach","attach":{"from_start":true,"stdin":true}}` + "\n",
		`{"op":"attach","attach":{"tail":10,"rows":24,"cols":80}}` + "\n",
		`{"op":"attach","attach":{"tail":-1}}` + "\n",
		`{"op":"signal","signal":15}` + "\n",
		`{"op":"signal","signal":99}` + "\n",
		`{"op":"stop","timeout_ms":1000}` + "\n",
		`{"op":"nope"}` + "\n",
		`{"op":"stop","extra":1}` + "\n",
		"no newline",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		line, err := readLine(bufio.NewReaderSize(bytes.NewReader(b), 16))
		if err != nil {
			return
		}
		if len(line) > maxLine || line[len(line)-1] != '\n' {
			t.Fatalf("line of %d bytes", len(line))
		}
		req, err := decodeRequest(line)
		if err != nil {
			return
		}
		switch req.Op {
		case opAttach:
			if req.Attach.Tail < 0 || (req.Attach.FromStart && req.Attach.Tail > 0) {
				t.Fatalf("accepted attach %+v", req.Attach)
			}
		case opSignal:
			if req.Signal < 1 || req.Signal > 64 {
				t.Fatalf("accepted signal %d", req.Signal)
			}
		case opStop:
			if req.TimeoutMS < 0 {
				t.Fatalf("accepted timeout %d", req.TimeoutMS)
			}
		default:
			t.Fatalf("accepted op %q", req.Op)
		}
	})
}

// FuzzDecodeMeta: metadata read back from disk never yields an id that
// is not a safe directory name.
func FuzzDecodeMeta(f *testing.F) {
	good, _ := json.Marshal(api.Session{ID: "abc123", Name: "n", State: api.SessionRunning, StartedAt: time.Unix(0, 0)})
	f.Add(good)
	f.Add([]byte(`{"id":"../../etc"}`))
	f.Add([]byte(`{"id":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeMeta(bytes.NewReader(b))
		if err == nil && (!namePattern.MatchString(s.ID) || filepath.Base(s.ID) != s.ID) {
			t.Fatalf("accepted id %q", s.ID)
		}
	})
}

// FuzzTailOffset checks tailOffset against a plain reimplementation, on
// logs that rotated (small limits).
func FuzzTailOffset(f *testing.F) {
	f.Add([]byte("a\nb\nc\n"), uint8(2), uint8(3))
	f.Add([]byte("a\nb\nc"), uint8(1), uint8(1))
	f.Add([]byte("\n\n\n\n"), uint8(3), uint8(2))
	f.Add([]byte("no newline at all"), uint8(5), uint8(4))
	f.Fuzz(func(t *testing.T, data []byte, n, limit uint8) {
		l, err := createLog(filepath.Join(t.TempDir(), "x.log"), int64(limit)+1, time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer l.closeFiles()
		// Write in small pieces so that rotation happens in between.
		for p := data; len(p) > 0; {
			k := min(len(p), 3)
			if _, err := l.Write(p[:k]); err != nil {
				t.Fatal(err)
			}
			p = p[k:]
		}
		l.mu.Lock()
		oldest := l.oldestLocked()
		l.mu.Unlock()
		kept := data[oldest:]
		want := int64(len(data))
		if n > 0 {
			want = oldest + referenceTail(kept, int(n))
		}
		if got := l.tailOffset(int(n)); got != want {
			t.Fatalf("tail %d of %q (kept %q): offset %d, want %d", n, data, kept, got, want)
		}
	})
}

// referenceTail is where the last n lines of b start.
func referenceTail(b []byte, n int) int64 {
	s := string(b)
	trimmed := strings.TrimSuffix(s, "\n")
	idx := len(trimmed)
	for range n {
		i := strings.LastIndexByte(trimmed[:idx], '\n')
		if i < 0 {
			return 0
		}
		idx = i
	}
	return int64(idx + 1)
}
