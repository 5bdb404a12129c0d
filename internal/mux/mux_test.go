package mux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/api"
)

func header(t Type, n uint32) []byte {
	h := []byte{byte(t), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[1:], n)
	return h
}

func TestRoundTrip(t *testing.T) {
	exit, _ := EncodeExit(api.ExitStatus{Code: 130, Signal: 2})
	big := bytes.Repeat([]byte{0xAB}, MaxPayload)
	tests := []struct {
		name    string
		typ     Type
		payload []byte
	}{
		{"stdin", Stdin, []byte("hello\n")},
		{"empty stdout", Stdout, nil},
		{"stderr", Stderr, []byte("err")},
		{"max payload", Stdout, big},
		{"exit", Exit, exit},
		{"stdin close", StdinClose, nil},
		{"resize", Resize, EncodeResize(40, 120)},
		{"signal", Signal, []byte{15}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := NewWriter(&buf).WriteFrame(tt.typ, tt.payload); err != nil {
				t.Fatal(err)
			}
			if buf.Len() != HeaderSize+len(tt.payload) {
				t.Fatalf("encoded %d bytes, want %d", buf.Len(), HeaderSize+len(tt.payload))
			}
			r := NewReader(&buf)
			f, err := r.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if f.Type != tt.typ || !bytes.Equal(f.Payload, tt.payload) {
				t.Fatalf("got %s %d bytes, want %s %d bytes", f.Type, len(f.Payload), tt.typ, len(tt.payload))
			}
			if _, err := r.ReadFrame(); err != io.EOF {
				t.Fatalf("after last frame: %v, want io.EOF", err)
			}
		})
	}
}

func TestReaderRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown type", header(7, 0), ErrUnknownType},
		{"type 255", header(255, 1), ErrUnknownType},
		// Only a header: the reader must refuse before reading (or
		// allocating) the announced 4 GiB.
		{"huge length", header(Stdout, 0xFFFFFFFF), ErrTooLarge},
		{"just over max", header(Stdin, MaxPayload+1), ErrTooLarge},
		{"resize too short", append(header(Resize, 2), 0, 1), ErrBadPayload},
		{"signal too long", append(header(Signal, 2), 1, 2), ErrBadPayload},
		{"stdin close with payload", append(header(StdinClose, 1), 0), ErrBadPayload},
		{"truncated header", []byte{1, 0, 0}, io.ErrUnexpectedEOF},
		{"truncated payload", append(header(Stdout, 10), 'a', 'b'), io.ErrUnexpectedEOF},
		{"header without payload", header(Stdout, 10), io.ErrUnexpectedEOF},
		{"empty", nil, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tt.in)).ReadFrame()
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestWriterRejects(t *testing.T) {
	w := NewWriter(io.Discard)
	tests := []struct {
		name    string
		typ     Type
		payload []byte
		want    error
	}{
		{"unknown type", 9, nil, ErrUnknownType},
		{"too large", Stdout, make([]byte, MaxPayload+1), ErrTooLarge},
		{"bad resize", Resize, []byte{1}, ErrBadPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := w.WriteFrame(tt.typ, tt.payload); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	for _, sig := range []int{0, -1, MaxSignal + 1} {
		if err := w.WriteSignal(sig); !errors.Is(err, ErrBadPayload) {
			t.Errorf("signal %d: got %v", sig, err)
		}
	}
}

func TestPayloadHelpers(t *testing.T) {
	rows, cols, err := DecodeResize(EncodeResize(0xFFFF, 80))
	if err != nil || rows != 0xFFFF || cols != 80 {
		t.Fatalf("resize: %d %d %v", rows, cols, err)
	}
	if _, err := DecodeSignal([]byte{0}); err == nil {
		t.Fatal("signal 0 accepted")
	}
	if s, err := DecodeSignal([]byte{9}); err != nil || s != 9 {
		t.Fatalf("signal: %d %v", s, err)
	}
	st := api.ExitStatus{Code: 127, Error: `exec: "nope": executable file not found in $PATH`}
	p, err := EncodeExit(st)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeExit(p); err != nil || got != st {
		t.Fatalf("exit: %+v %v", got, err)
	}
	if _, err := DecodeExit([]byte("{")); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("bad exit json: %v", err)
	}
}

// The stream writer splits big writes so control frames can interleave.
func TestStreamChunks(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	data := bytes.Repeat([]byte("x"), 3*chunkSize+7)
	if n, err := w.Stream(Stdout).Write(data); err != nil || n != len(data) {
		t.Fatalf("write: %d %v", n, err)
	}
	r := NewReader(&buf)
	var got []byte
	frames := 0
	for {
		f, err := r.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Payload) > chunkSize {
			t.Fatalf("frame of %d bytes", len(f.Payload))
		}
		frames++
		got = append(got, f.Payload...)
	}
	if frames != 4 || !bytes.Equal(got, data) {
		t.Fatalf("%d frames, %d bytes", frames, len(got))
	}
}

// Frames from concurrent writers never interleave inside a frame.
func TestWriterConcurrent(t *testing.T) {
	pr, pw := io.Pipe()
	w := NewWriter(pw)
	var wg sync.WaitGroup
	for i, typ := range []Type{Stdout, Stderr} {
		wg.Go(func() {
			p := bytes.Repeat([]byte{byte('a' + i)}, 1000)
			for range 200 {
				if err := w.WriteFrame(typ, p); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); pw.Close() }()
	r := NewReader(pr)
	count := map[Type]int{}
	for {
		f, err := r.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		want := byte('a')
		if f.Type == Stderr {
			want = 'b'
		}
		if len(f.Payload) != 1000 || strings.Trim(string(f.Payload), string(want)) != "" {
			t.Fatalf("mixed frame of type %s", f.Type)
		}
		count[f.Type]++
	}
	if count[Stdout] != 200 || count[Stderr] != 200 {
		t.Fatalf("counts %v", count)
	}
}

// FuzzReader: every frame the reader accepts re-encodes to exactly the
// bytes it consumed, and no input makes it panic or over-allocate.
func FuzzReader(f *testing.F) {
	exit, _ := EncodeExit(api.ExitStatus{Code: 1})
	f.Add(append(header(Stdout, 3), "abc"...))
	f.Add(append(header(Exit, uint32(len(exit))), exit...))
	f.Add(append(append(header(Resize, 4), EncodeResize(24, 80)...), header(StdinClose, 0)...))
	f.Add(append(header(Signal, 1), 2))
	f.Add(header(Stdin, 0xFFFFFFFF))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		r := NewReader(src)
		var out bytes.Buffer
		w := NewWriter(&out)
		consumed := 0
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				break
			}
			if err := w.WriteFrame(fr.Type, fr.Payload); err != nil {
				t.Fatalf("accepted frame does not re-encode: %v", err)
			}
			consumed = len(in) - src.Len()
		}
		if !bytes.Equal(out.Bytes(), in[:consumed]) {
			t.Fatalf("re-encoding differs from input prefix")
		}
	})
}
