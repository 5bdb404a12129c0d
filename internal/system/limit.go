package system

import (
	"errors"
	"fmt"
	"io"
)

// ErrTooLarge reports a stream from a guest (or an image) that went past
// the size banger accepts for it.
var ErrTooLarge = errors.New("stream exceeds its size limit")

// LimitedWriter passes at most Max bytes to W; the write that would go
// past it fails with an error wrapping ErrTooLarge, so a hostile sender
// cannot fill the host's disk or memory. What names the stream in the
// error.
type LimitedWriter struct {
	W    io.Writer
	Max  int64
	What string
	N    int64
}

func (l *LimitedWriter) Write(p []byte) (int, error) {
	if l.N+int64(len(p)) > l.Max {
		return 0, fmt.Errorf("%w: %s is larger than %s", ErrTooLarge, l.What, HumanBytes(uint64(l.Max)))
	}
	n, err := l.W.Write(p)
	l.N += int64(n)
	return n, err
}
