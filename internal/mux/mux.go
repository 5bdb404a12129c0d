// Package mux frames exec (and attach) streams: stdin, stdout and stderr
// data, terminal resizes, signals and the final exit status share one
// connection between the CLI, the daemon and the guest agent.
//
// A frame is one type byte, a 4-byte big-endian payload length and the
// payload. The reader checks the type and length before it allocates, so a
// hostile or corrupt peer cannot make it reserve more than MaxPayload.
package mux

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/bangerdev/banger/api"
)

// Type says what a frame carries.
type Type uint8

// Frame types. The numbers are the wire format: never renumber.
const (
	Stdin      Type = 0 // client → agent: bytes for the command's stdin
	Stdout     Type = 1 // agent → client: command output (the only stream with a TTY)
	Stderr     Type = 2 // agent → client
	Exit       Type = 3 // agent → client: JSON api.ExitStatus, always the last frame
	StdinClose Type = 4 // client → agent: end of stdin (empty payload)
	Resize     Type = 5 // client → agent: rows u16, cols u16, big-endian
	Signal     Type = 6 // client → agent: one byte, the signal number
)

const (
	// HeaderSize is the type byte plus the length.
	HeaderSize = 5
	// MaxPayload bounds a single frame.
	MaxPayload = 1 << 20
	// chunkSize bounds the data frames the stream writers produce, so that
	// stdout, stderr and control frames interleave instead of one big write
	// holding the connection.
	chunkSize = 32 << 10
)

// MaxSignal is the highest signal number a Signal frame may carry (Linux
// real-time signals end at 64).
const MaxSignal = 64

var (
	ErrUnknownType = errors.New("mux: unknown frame type")
	ErrTooLarge    = errors.New("mux: frame payload too large")
	ErrBadPayload  = errors.New("mux: malformed frame payload")
)

func (t Type) String() string {
	switch t {
	case Stdin:
		return "stdin"
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	case Exit:
		return "exit"
	case StdinClose:
		return "stdin-close"
	case Resize:
		return "resize"
	case Signal:
		return "signal"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Frame is one decoded frame.
type Frame struct {
	Type    Type
	Payload []byte
}

// checkHeader rejects what no valid frame can be, before any allocation.
func checkHeader(t Type, n uint32) error {
	if n > MaxPayload {
		return fmt.Errorf("%w: %s frame of %d bytes (max %d)", ErrTooLarge, t, n, MaxPayload)
	}
	switch t {
	case Stdin, Stdout, Stderr, Exit:
		return nil
	case StdinClose:
		if n != 0 {
			return fmt.Errorf("%w: %s frame with %d payload bytes", ErrBadPayload, t, n)
		}
	case Resize:
		if n != 4 {
			return fmt.Errorf("%w: %s frame with %d payload bytes, want 4", ErrBadPayload, t, n)
		}
	case Signal:
		if n != 1 {
			return fmt.Errorf("%w: %s frame with %d payload bytes, want 1", ErrBadPayload, t, n)
		}
	default:
		return fmt.Errorf("%w %d", ErrUnknownType, uint8(t))
	}
	return nil
}

// Writer encodes frames onto a stream. It is safe for concurrent use: each
// frame goes out in one Write call, whole. Writes block when the peer does
// not read, which is how backpressure reaches the producer.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteFrame sends one frame.
func (w *Writer) WriteFrame(t Type, payload []byte) error {
	if err := checkHeader(t, uint32(min(len(payload), MaxPayload+1))); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// One Write per frame: on a yamux stream two writes would cost two
	// data frames, and a concurrent writer could never split a frame anyway.
	buf := append(w.buf[:0], byte(t), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(buf[1:], uint32(len(payload)))
	buf = append(buf, payload...)
	_, err := w.w.Write(buf)
	if cap(buf) <= HeaderSize+chunkSize {
		w.buf = buf
	}
	return err
}

// WriteExit sends the final exit status.
func (w *Writer) WriteExit(st api.ExitStatus) error {
	p, err := EncodeExit(st)
	if err != nil {
		return err
	}
	return w.WriteFrame(Exit, p)
}

// WriteResize asks for a new terminal size.
func (w *Writer) WriteResize(rows, cols uint16) error {
	return w.WriteFrame(Resize, EncodeResize(rows, cols))
}

// WriteSignal asks the agent to signal the command's process group.
func (w *Writer) WriteSignal(sig int) error {
	p, err := EncodeSignal(sig)
	if err != nil {
		return err
	}
	return w.WriteFrame(Signal, p)
}

// WriteStdinClose ends the command's stdin.
func (w *Writer) WriteStdinClose() error { return w.WriteFrame(StdinClose, nil) }

// Stream returns an io.Writer that sends everything written to it as data
// frames of type t (Stdin, Stdout or Stderr), split into bounded chunks.
// Empty writes send nothing.
func (w *Writer) Stream(t Type) io.Writer { return streamWriter{w: w, t: t, size: chunkSize} }

// BulkStream is Stream with frames of up to size bytes (at most
// MaxPayload), for one-way bulk data where interleaving does not matter
// and fewer frames cost the receiver less.
func (w *Writer) BulkStream(t Type, size int) io.Writer {
	return streamWriter{w: w, t: t, size: min(max(size, 1), MaxPayload)}
}

type streamWriter struct {
	w    *Writer
	t    Type
	size int
}

func (s streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), s.size)]
		if err := s.w.WriteFrame(s.t, c); err != nil {
			return n, err
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

// Reader decodes frames from a stream. It reads exactly the bytes of each
// frame and never ahead, so the stream can be handed on after any frame.
// It is not safe for concurrent use.
type Reader struct {
	r   io.Reader
	hdr [HeaderSize]byte
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// ReadFrame returns the next frame. It returns io.EOF when the stream ends
// cleanly between frames and io.ErrUnexpectedEOF inside one. The payload is
// freshly allocated and owned by the caller.
func (r *Reader) ReadFrame() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return Frame{}, err
	}
	t := Type(r.hdr[0])
	n := binary.BigEndian.Uint32(r.hdr[1:])
	if err := checkHeader(t, n); err != nil {
		return Frame{}, err
	}
	f := Frame{Type: t}
	if n > 0 {
		f.Payload = make([]byte, n)
		if _, err := io.ReadFull(r.r, f.Payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// EncodeResize builds a Resize payload.
func EncodeResize(rows, cols uint16) []byte {
	p := make([]byte, 4)
	binary.BigEndian.PutUint16(p, rows)
	binary.BigEndian.PutUint16(p[2:], cols)
	return p
}

// DecodeResize parses a Resize payload.
func DecodeResize(p []byte) (rows, cols uint16, err error) {
	if len(p) != 4 {
		return 0, 0, fmt.Errorf("%w: resize payload of %d bytes", ErrBadPayload, len(p))
	}
	return binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]), nil
}

// EncodeSignal builds a Signal payload.
func EncodeSignal(sig int) ([]byte, error) {
	if sig < 1 || sig > MaxSignal {
		return nil, fmt.Errorf("%w: signal %d out of range 1..%d", ErrBadPayload, sig, MaxSignal)
	}
	return []byte{byte(sig)}, nil
}

// DecodeSignal parses a Signal payload.
func DecodeSignal(p []byte) (int, error) {
	if len(p) != 1 {
		return 0, fmt.Errorf("%w: signal payload of %d bytes", ErrBadPayload, len(p))
	}
	sig := int(p[0])
	if sig < 1 || sig > MaxSignal {
		return 0, fmt.Errorf("%w: signal %d out of range 1..%d", ErrBadPayload, sig, MaxSignal)
	}
	return sig, nil
}

// EncodeExit builds an Exit payload.
func EncodeExit(st api.ExitStatus) ([]byte, error) {
	p, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encode exit status: %w", err)
	}
	if len(p) > MaxPayload {
		return nil, fmt.Errorf("%w: exit status of %d bytes", ErrTooLarge, len(p))
	}
	return p, nil
}

// DecodeExit parses an Exit payload.
func DecodeExit(p []byte) (api.ExitStatus, error) {
	var st api.ExitStatus
	if err := json.Unmarshal(p, &st); err != nil {
		return api.ExitStatus{}, fmt.Errorf("%w: exit status: %v", ErrBadPayload, err)
	}
	return st, nil
}
