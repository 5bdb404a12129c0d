package daemon

import (
	"bytes"
	"context"
	"io"
	"sync"
)

type stageOutputKey struct{}

// stageOutput is where a stage streams what it prints (a provisioning
// script's output, say): watchers of the operation see it live. Outside
// an operation stage it discards.
func stageOutput(ctx context.Context) io.Writer {
	if w, ok := ctx.Value(stageOutputKey{}).(*stageWriter); ok {
		return w
	}
	return io.Discard
}

// stageWriter publishes whole lines, so a watcher can prefix each one;
// a line longer than maxPending is cut rather than held forever.
type stageWriter struct {
	mu      sync.Mutex
	pending []byte
	publish func(text string)
}

const maxPending = 16 << 10

func (w *stageWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, p...)
	if i := bytes.LastIndexByte(w.pending, '\n'); i >= 0 {
		w.publish(string(w.pending[:i+1]))
		w.pending = append(w.pending[:0], w.pending[i+1:]...)
	}
	if len(w.pending) > maxPending {
		w.publish(string(w.pending) + "\n")
		w.pending = w.pending[:0]
	}
	return len(p), nil
}

// flush publishes a last line that had no newline.
func (w *stageWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.pending) > 0 {
		w.publish(string(w.pending) + "\n")
		w.pending = nil
	}
}
