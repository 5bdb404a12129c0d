package session

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"
)

// streamLog is one output stream's log: the current file and one rotated
// generation, addressed by absolute offsets (bytes written since the
// session started), with cursors for the attachers that follow it.
//
// Reads and writes hold mu. Both are single pread/write calls on a tmpfs,
// short enough that a mutex beats the bookkeeping of anything finer.
type streamLog struct {
	path  string
	limit int64
	stall time.Duration

	mu       sync.Mutex
	cur, old *generation // old is nil until the first rotation
	closed   bool        // no more writes will come
	// changed is closed (and replaced) on every write and on close, to
	// wake cursors waiting for output.
	changed chan struct{}
	// progress is closed (and replaced) whenever a cursor advances, to
	// wake a writer waiting for slow cursors.
	progress chan struct{}
	cursors  map[*cursor]struct{}
}

type generation struct {
	f          *os.File
	base, size int64
}

func (g *generation) end() int64 { return g.base + g.size }

// cursor is one attacher's position in a stream.
type cursor struct {
	off   int64
	moved time.Time
	// drop disconnects the attacher; it is called at most once, without
	// the log's lock held.
	drop func()
}

// createLog starts an empty log at path (removing an older one).
func createLog(path string, limit int64, stall time.Duration) (*streamLog, error) {
	_ = os.Remove(path + rotatedSuffix)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create log: %w", err)
	}
	return &streamLog{
		path: path, limit: limit, stall: stall,
		cur:      &generation{f: f},
		changed:  make(chan struct{}),
		progress: make(chan struct{}),
		cursors:  map[*cursor]struct{}{},
	}, nil
}

// openDiskLog opens what a finished supervisor left behind, read-only and
// closed to writes. Offsets start at 0 at the rotated generation, since
// what was rotated away before it is gone.
func openDiskLog(path string) (*streamLog, error) {
	l := &streamLog{path: path, closed: true, changed: make(chan struct{}), progress: make(chan struct{}), cursors: map[*cursor]struct{}{}}
	var base int64
	if f, err := os.Open(path + rotatedSuffix); err == nil {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open log: %w", err)
		}
		l.old = &generation{f: f, size: st.Size()}
		base = st.Size()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open log: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && l.old == nil {
			// A launch that failed before any log existed: empty.
			l.cur = &generation{}
			return l, nil
		}
		l.closeFiles()
		return nil, fmt.Errorf("open log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		l.closeFiles()
		return nil, fmt.Errorf("open log: %w", err)
	}
	l.cur = &generation{f: f, base: base, size: st.Size()}
	return l, nil
}

func (l *streamLog) closeFiles() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range []*generation{l.old, l.cur} {
		if g != nil && g.f != nil {
			g.f.Close()
		}
	}
}

func (l *streamLog) oldestLocked() int64 {
	if l.old != nil {
		return l.old.base
	}
	return l.cur.base
}

// Write appends p. Before rotating away a generation that a cursor still
// has to read, it waits for that cursor, and disconnects cursors that make
// no progress for l.stall: this is how a slow attacher slows the command
// without the supervisor buffering.
func (l *streamLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, errors.New("write log: closed")
	}
	if l.cur.size > 0 && l.cur.size+int64(len(p)) > l.limit {
		l.waitCursorsLocked()
		if err := l.rotateLocked(); err != nil {
			return 0, err
		}
	}
	n, err := l.cur.f.Write(p)
	l.cur.size += int64(n)
	if n > 0 {
		l.broadcastLocked()
	}
	if err != nil {
		return n, fmt.Errorf("write log: %w", err)
	}
	return n, nil
}

// waitCursorsLocked returns once no cursor is still inside the rotated
// generation (which the next rotation deletes), dropping stalled ones.
func (l *streamLog) waitCursorsLocked() {
	start := time.Now()
	for {
		var lagging []*cursor
		for c := range l.cursors {
			if c.off < l.cur.base {
				lagging = append(lagging, c)
			}
		}
		if len(lagging) == 0 {
			return
		}
		now := time.Now()
		wait := l.stall
		for _, c := range lagging {
			since := start
			if c.moved.After(since) {
				since = c.moved
			}
			if now.Sub(since) >= l.stall {
				delete(l.cursors, c)
				go c.drop()
				continue
			}
			wait = min(wait, l.stall-now.Sub(since))
		}
		progress := l.progress
		l.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-progress:
		case <-t.C:
		}
		t.Stop()
		l.mu.Lock()
	}
}

func (l *streamLog) rotateLocked() error {
	if l.old != nil {
		l.old.f.Close()
	}
	if err := os.Rename(l.path, l.path+rotatedSuffix); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		// Keep writing to the renamed file rather than lose output.
		l.old = nil
		return fmt.Errorf("rotate log: %w", err)
	}
	l.old = l.cur
	l.cur = &generation{f: f, base: l.old.end()}
	return nil
}

func (l *streamLog) broadcastLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Close ends the log for writers; readers still read what it holds.
func (l *streamLog) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.broadcastLocked()
	}
}

// state returns the end offset, whether writes are over, and a channel
// closed at the next change.
func (l *streamLog) state() (end int64, closed bool, changed <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur.end(), l.closed, l.changed
}

// newCursor registers a cursor at off (clamped to what the log holds).
func (l *streamLog) newCursor(off int64, drop func()) *cursor {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := &cursor{off: min(max(off, l.oldestLocked()), l.cur.end()), moved: time.Now(), drop: drop}
	if !l.closed {
		l.cursors[c] = struct{}{}
	}
	return c
}

func (l *streamLog) removeCursor(c *cursor) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.cursors, c)
	close(l.progress)
	l.progress = make(chan struct{})
}

// read fills p from c's position and advances c. It returns 0 when c is
// at the end. A cursor whose data was rotated away (it was dropped)
// skips to the oldest data left.
func (l *streamLog) read(c *cursor, p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c.off = max(c.off, l.oldestLocked())
	n, err := l.readAtLocked(p, c.off)
	if n > 0 {
		c.off += int64(n)
		c.moved = time.Now()
		close(l.progress)
		l.progress = make(chan struct{})
	}
	return n, err
}

// readAtLocked reads from the generation holding off, never across two.
func (l *streamLog) readAtLocked(p []byte, off int64) (int, error) {
	g := l.cur
	if l.old != nil && off < l.old.end() {
		g = l.old
	}
	if off < g.base || off >= g.end() || g.f == nil {
		return 0, nil
	}
	k := min(int64(len(p)), g.end()-off)
	n, err := g.f.ReadAt(p[:k], off-g.base)
	if err == io.EOF && int64(n) == k {
		err = nil
	}
	if err != nil {
		return n, fmt.Errorf("read log: %w", err)
	}
	return n, nil
}

// tailOffset is where the last n lines start. A final newline ends the
// last line rather than starting an empty one. n <= 0 means the end.
func (l *streamLog) tailOffset(n int) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	start, end := l.oldestLocked(), l.cur.end()
	if n <= 0 || end == start {
		return end
	}
	need := n
	var last [1]byte
	if k, _ := l.readAtLocked(last[:], end-1); k == 1 && last[0] == '\n' {
		need++
	}
	buf := make([]byte, 32<<10)
	pos := end
	count := 0
	for pos > start {
		lo := max(start, pos-int64(len(buf)))
		if l.old != nil && pos > l.cur.base && lo < l.cur.base {
			lo = l.cur.base // one generation per read
		}
		k, err := l.readAtLocked(buf[:pos-lo], lo)
		if err != nil || int64(k) != pos-lo {
			return start
		}
		for i := k - 1; i >= 0; i-- {
			if buf[i] == '\n' {
				count++
				if count == need {
					return lo + int64(i) + 1
				}
			}
		}
		pos = lo
	}
	return start
}

// head returns up to maxLines lines (and maxBytes bytes) from the start
// of what the log holds.
func (l *streamLog) head(maxLines, maxBytes int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf := make([]byte, maxBytes)
	n, _ := l.readAtLocked(buf, l.oldestLocked())
	buf = buf[:n]
	lines := 0
	for i, b := range buf {
		if b == '\n' {
			lines++
			if lines == maxLines {
				return string(buf[:i+1])
			}
		}
	}
	return string(buf)
}
