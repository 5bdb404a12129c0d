// Package attach bridges local stdin, stdout and stderr to a session's
// attach stream (internal/mux frames, see api.AttachSessionRequest). The
// CLI's `vm session attach` uses it, and so will the TUI.
//
// Pipe mode: stdout and stderr frames go to separate local writers; the
// end of local stdin sends StdinClose; an interrupt (Ctrl-C, SIGTERM,
// SIGHUP) detaches and leaves the session running, unless SigProxy asks
// to forward signals to the session instead.
//
// TTY mode: the local terminal is put in raw mode (every key, Ctrl-C
// included, goes to the session's terminal) and restored on return; its
// size follows SIGWINCH as Resize frames; the detach keys (Ctrl-P Ctrl-Q
// by default) detach. Keys are scanned only in TTY mode: in pipe mode
// stdin is data and goes through byte for byte.
//
// Detaching closes the stream, which the guest reads as "this attacher
// left"; the session never sees a signal or end of input because of it.
package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
)

// DefaultDetachKeys is Ctrl-P Ctrl-Q, as in docker.
const DefaultDetachKeys = "ctrl-p,ctrl-q"

// ErrStreamLost is returned when the stream ended without an exit status
// and without a detach: the daemon or the guest went away. The session
// itself is most likely still running.
var ErrStreamLost = errors.New("attach stream ended without an exit status")

// Options say how to bridge.
type Options struct {
	// Stdin is forwarded as Stdin frames; nil for a read-only attach
	// (then nothing is sent, not even StdinClose).
	Stdin io.Reader
	// Stdout and Stderr get the session's output; nil discards.
	Stdout, Stderr io.Writer
	// TTY is the session's mode: it runs on a terminal.
	TTY bool
	// Terminal is the local terminal, when there is one (usually
	// os.Stdin): in TTY mode it is made raw and its size followed.
	Terminal *os.File
	// SigProxy forwards SIGINT, SIGTERM and SIGHUP to the session in pipe
	// mode instead of detaching.
	SigProxy bool
	// DetachKeys end the attachment in TTY mode (see ParseDetachKeys);
	// nil means DefaultDetachKeys, empty disables.
	DetachKeys []byte
	// Signals, when non-nil, replaces os/signal as the source of local
	// signals (tests, or a TUI that handles signals itself).
	Signals <-chan os.Signal
}

// Result is how an attachment ended: with the session's exit status, or
// detached (Exit nil).
type Result struct {
	Exit     *api.ExitStatus
	Detached bool
}

// Run bridges until the session ends (Result.Exit), the user detaches
// (Result.Detached) or ctx ends. conn is the stream from the daemon,
// already switched to the mux protocol; Run closes it.
func Run(ctx context.Context, conn io.ReadWriteCloser, o Options) (Result, error) {
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	keys := o.DetachKeys
	if keys == nil {
		keys, _ = ParseDetachKeys(DefaultDetachKeys)
	}
	w := mux.NewWriter(conn)
	var detached atomic.Bool
	var closeOnce sync.Once
	closeConn := func() {
		closeOnce.Do(func() {
			// Some streams keep reads blocked after Close; a deadline
			// wakes them.
			if d, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
				_ = d.SetDeadline(time.Now())
			}
			conn.Close()
		})
	}
	defer closeConn()
	detach := func() {
		detached.Store(true)
		closeConn()
	}
	stop := context.AfterFunc(ctx, closeConn)
	defer stop()
	done := make(chan struct{})
	defer close(done)

	tty := o.TTY && o.Terminal != nil && term.IsTerminal(int(o.Terminal.Fd()))
	if tty {
		fd := int(o.Terminal.Fd())
		if old, err := term.MakeRaw(fd); err == nil {
			defer term.Restore(fd, old)
		}
		if cols, rows, err := term.GetSize(fd); err == nil {
			_ = w.WriteResize(uint16(rows), uint16(cols))
		}
	}

	sigs := o.Signals
	if sigs == nil {
		ch := make(chan os.Signal, 4)
		if tty {
			signal.Notify(ch, syscall.SIGWINCH, syscall.SIGTERM, syscall.SIGHUP)
		} else {
			signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		}
		defer signal.Stop(ch)
		sigs = ch
	}
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				sig, _ := s.(syscall.Signal)
				switch {
				case sig == syscall.SIGWINCH:
					if tty {
						if cols, rows, err := term.GetSize(int(o.Terminal.Fd())); err == nil {
							_ = w.WriteResize(uint16(rows), uint16(cols))
						}
					}
				case o.SigProxy && !o.TTY && sig != 0:
					_ = w.WriteSignal(int(sig))
				default:
					detach()
				}
			}
		}
	}()

	if o.Stdin != nil {
		var scan *keyScanner
		if o.TTY && len(keys) > 0 {
			scan = &keyScanner{keys: keys}
		}
		go func() {
			if err := copyStdin(w, o.Stdin, scan); errors.Is(err, errDetach) {
				detach()
				return
			}
			// The end of local input is the end of the session's input
			// (on a closed stream this fails harmlessly).
			_ = w.WriteStdinClose()
		}()
	}

	r := mux.NewReader(conn)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			if detached.Load() {
				return Result{Detached: true}, nil
			}
			if ctx.Err() != nil {
				return Result{}, ctx.Err()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return Result{}, ErrStreamLost
			}
			return Result{}, fmt.Errorf("%w: %v", ErrStreamLost, err)
		}
		switch f.Type {
		case mux.Stdout:
			if _, err := o.Stdout.Write(f.Payload); err != nil {
				return Result{}, fmt.Errorf("write stdout: %w", err)
			}
		case mux.Stderr:
			if _, err := o.Stderr.Write(f.Payload); err != nil {
				return Result{}, fmt.Errorf("write stderr: %w", err)
			}
		case mux.Exit:
			st, err := mux.DecodeExit(f.Payload)
			if err != nil {
				return Result{}, err
			}
			return Result{Exit: &st}, nil
		default:
			return Result{}, fmt.Errorf("read attach stream: unexpected %s frame", f.Type)
		}
	}
}

var errDetach = errors.New("detach keys pressed")

// copyStdin sends stdin as Stdin frames until it ends (nil), fails, or
// the detach keys arrive (errDetach).
func copyStdin(w *mux.Writer, stdin io.Reader, scan *keyScanner) error {
	out := w.Stream(mux.Stdin)
	buf := make([]byte, 32<<10)
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			data := buf[:n]
			if scan != nil {
				var hit bool
				data, hit = scan.feed(data)
				if len(data) > 0 {
					if _, werr := out.Write(data); werr != nil {
						return werr
					}
				}
				if hit {
					return errDetach
				}
			} else if _, werr := out.Write(data); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// keyScanner finds the detach sequence in typed input. Bytes that might
// start the sequence are held back until it is clear whether they do; a
// sequence that breaks off releases them.
type keyScanner struct {
	keys    []byte
	matched int
}

// feed returns the bytes to forward and whether the sequence completed
// (the bytes after it are dropped: the user is leaving).
func (k *keyScanner) feed(p []byte) ([]byte, bool) {
	var out []byte
	for _, b := range p {
		if b == k.keys[k.matched] {
			k.matched++
			if k.matched == len(k.keys) {
				k.matched = 0
				return out, true
			}
			continue
		}
		// Release what was held, then look at b afresh.
		out = append(out, k.keys[:k.matched]...)
		k.matched = 0
		if b == k.keys[0] {
			k.matched = 1
			if len(k.keys) == 1 {
				k.matched = 0
				return out, true
			}
			continue
		}
		out = append(out, b)
	}
	return out, false
}

// ParseDetachKeys reads a docker-style key list: comma-separated keys,
// each one character or ctrl-X (X one of a-z, @, [, \, ], ^, _). ""
// disables detaching by keys.
func ParseDetachKeys(s string) ([]byte, error) {
	if s == "" {
		return []byte{}, nil
	}
	var out []byte
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		lower := strings.ToLower(k)
		switch {
		case len(k) == 1:
			out = append(out, k[0])
		case strings.HasPrefix(lower, "ctrl-") && len(k) == 6:
			c := lower[5]
			switch {
			case c >= 'a' && c <= 'z':
				out = append(out, c-'a'+1)
			case c == '@':
				out = append(out, 0)
			case c >= '[' && c <= '_':
				out = append(out, c-'['+27)
			default:
				return nil, fmt.Errorf("invalid detach key %q: ctrl- takes a-z, @, [, \\, ], ^ or _", k)
			}
		default:
			return nil, fmt.Errorf("invalid detach key %q: use one character or ctrl-X, comma-separated (e.g. %s)", k, DefaultDetachKeys)
		}
	}
	return out, nil
}
