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
	w.WriteFrame(Resize, []byte{1}) // bad payload: dropped
	w.WriteSignal(15)
	w.WriteFrame(Signal, []byte{0, 1}) // bad payload: dropped
	w.WriteFrame(Stdout, []byte("x"))  // not the client's to send
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

	// Nil handlers drop their frames.
	buf.Reset()
	w.WriteFrame(Stdin, []byte("ab"))
	w.WriteResize(24, 80)
	w.WriteSignal(2)
	w.WriteStdinClose()
	w.WriteFrame(Exit, []byte("{}"))
	ServeInput(NewReader(&buf), Input{})
}
