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
	// Guard, when set, also stops the stream when the disk runs low.
	Guard *SpaceGuard
}

func (l *LimitedWriter) Write(p []byte) (int, error) {
	if l.N+int64(len(p)) > l.Max {
		return 0, fmt.Errorf("%w: %s is larger than %s", ErrTooLarge, l.What, HumanBytes(uint64(l.Max)))
	}
	if err := l.Guard.Add(len(p)); err != nil {
		return 0, err
	}
	n, err := l.W.Write(p)
	l.N += int64(n)
	return n, err
}

// CappedWriter keeps the first Max bytes written to W and silently drops
// the rest after writing Note once: for logs of guest output, where
// losing the tail is better than failing the work that produced it.
type CappedWriter struct {
	W    io.Writer
	Max  int64
	Note string
	n    int64
}

func (c *CappedWriter) Write(p []byte) (int, error) {
	if c.n >= c.Max {
		return len(p), nil
	}
	keep := p[:min(int64(len(p)), c.Max-c.n)]
	n, err := c.W.Write(keep)
	c.n += int64(n)
	if err == nil && c.n >= c.Max && c.Note != "" {
		_, _ = io.WriteString(c.W, c.Note)
	}
	if err != nil {
		return n, err
	}
	return len(p), nil
}
