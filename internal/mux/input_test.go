package mux

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestServeInput(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.WriteFrame(Stdin, []byte("ab"))
	w.WriteResize(24, 80)
	w.WriteSignal(15)
	buf.Write([]byte{byte(Signal), 0, 0, 0, 1, 0}) // signal 0: out of range, dropped
	w.WriteFrame(Stdout, []byte("x"))              // not the client's to send
	w.WriteStdinClose()
	w.WriteFrame(Stdin, []byte("c"))

	var got []string
	ServeInput(NewReader(&buf), Input{
		Stdin:      func(p []byte) { got = append(got, "stdin "+string(p)) },
		StdinClose: func() { got = append(got, "close") },
		Resize:     func(rows, cols uint16) { got = append(got, fmt.Sprintf("resize %dx%d", rows, cols)) },
		Signal:     func(sig int) { got = append(got, fmt.Sprintf("signal %d", sig)) },
		Other:      func(t Type) { got = append(got, "other "+t.String()) },
	})
	want := "stdin ab|resize 24x80|signal 15|other stdout|close|stdin c"
	if strings.Join(got, "|") != want {
		t.Fatalf("got %s\nwant %s", strings.Join(got, "|"), want)
	}

	// A frame the reader refuses ends the stream: nothing after a
	// resize of the wrong size is applied.
	buf.Reset()
	got = nil
	w.WriteFrame(Stdin, []byte("a"))
	buf.Write([]byte{byte(Resize), 0, 0, 0, 1, 9})
	w.WriteFrame(Stdin, []byte("b"))
	ServeInput(NewReader(&buf), Input{Stdin: func(p []byte) { got = append(got, string(p)) }})
	if strings.Join(got, "") != "a" {
		t.Fatalf("after a malformed frame: got %q", got)
	}

	// Nil handlers drop their frames.
	buf.Reset()
	w.WriteFrame(Stdin, []byte("ab"))
	w.WriteResize(24, 80)
	w.WriteSignal(2)
	w.WriteStdinClose()
	w.WriteFrame(Exit, []byte("{}"))
	ServeInput(NewReader(&buf), Input{})
}
