package attach

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
)

func TestParseDetachKeys(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []byte
		err  bool
	}{
		{"ctrl-p,ctrl-q", []byte{16, 17}, false},
		{"ctrl-a", []byte{1}, false},
		{"CTRL-[", []byte{27}, false},
		{"ctrl-@,x", []byte{0, 'x'}, false},
		{"", []byte{}, false},
		{"ctrl-1", nil, true},
		{"alt-x", nil, true},
	} {
		got, err := ParseDetachKeys(c.in)
		if (err != nil) != c.err || !bytes.Equal(got, c.want) {
			t.Errorf("ParseDetachKeys(%q) = %v, %v; want %v, err=%t", c.in, got, err, c.want, c.err)
		}
	}
}

func TestKeyScanner(t *testing.T) {
	keys := []byte{16, 17}
	for _, c := range []struct {
		chunks []string
		out    string
		hit    bool
	}{
		{[]string{"hello"}, "hello", false},
		{[]string{"ab\x10\x11cd"}, "ab", true},
		{[]string{"ab\x10", "\x11"}, "ab", true},
		{[]string{"a\x10b"}, "a\x10b", false},
		{[]string{"\x10\x10\x11"}, "\x10", true},
		{[]string{"x\x10"}, "x", false}, // held back: may still become a detach
	} {
		k := &keyScanner{keys: keys}
		var out []byte
		hit := false
		for _, ch := range c.chunks {
			o, h := k.feed([]byte(ch))
			out = append(out, o...)
			if h {
				hit = true
				break
			}
		}
		if string(out) != c.out || hit != c.hit {
			t.Errorf("%q: got %q hit=%t; want %q hit=%t", c.chunks, out, hit, c.out, c.hit)
		}
	}
}

// fakeSession serves the guest end of an attach stream: it echoes stdin
// frames as stdout, sends "e" on stderr, and on StdinClose sends the exit
// status. Frames it got are reported on got.
func fakeSession(t *testing.T, conn net.Conn, got chan<- mux.Frame) {
	t.Helper()
	go func() {
		defer conn.Close()
		r, w := mux.NewReader(conn), mux.NewWriter(conn)
		_ = w.WriteFrame(mux.Stderr, []byte("e"))
		for {
			f, err := r.ReadFrame()
			if err != nil {
				close(got)
				return
			}
			got <- f
			switch f.Type {
			case mux.Stdin:
				_ = w.WriteFrame(mux.Stdout, f.Payload)
			case mux.StdinClose:
				_ = w.WriteExit(api.ExitStatus{Code: 3})
				close(got)
				return
			}
		}
	}()
}

func TestRunPipeEchoAndExit(t *testing.T) {
	host, guest := net.Pipe()
	got := make(chan mux.Frame, 16)
	fakeSession(t, guest, got)
	var out, errb bytes.Buffer
	res, err := Run(context.Background(), host, Options{
		Stdin: strings.NewReader("hello"), Stdout: &out, Stderr: &errb, Signals: make(chan os.Signal),
	})
	if err != nil || res.Exit == nil || res.Exit.Code != 3 || res.Detached {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	if out.String() != "hello" || errb.String() != "e" {
		t.Fatalf("stdout %q stderr %q", out.String(), errb.String())
	}
}

func TestRunInterruptDetaches(t *testing.T) {
	host, guest := net.Pipe()
	got := make(chan mux.Frame, 16)
	fakeSession(t, guest, got)
	sigs := make(chan os.Signal, 1)
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		time.Sleep(50 * time.Millisecond)
		sigs <- os.Interrupt
	}()
	res, err := Run(context.Background(), host, Options{Stdin: pr, Signals: sigs})
	if err != nil || !res.Detached {
		t.Fatalf("Run = %+v, %v; want detached", res, err)
	}
	// The session must not have been told anything: no StdinClose, no
	// signal.
	for f := range got {
		if f.Type == mux.StdinClose || f.Type == mux.Signal {
			t.Fatalf("detach sent a %s frame", f.Type)
		}
	}
}

func TestRunSigProxyForwards(t *testing.T) {
	host, guest := net.Pipe()
	got := make(chan mux.Frame, 16)
	fakeSession(t, guest, got)
	sigs := make(chan os.Signal, 1)
	pr, pw := io.Pipe()
	sigs <- syscall.SIGINT
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err := Run(context.Background(), host, Options{Stdin: pr, Signals: sigs, SigProxy: true})
		if err != nil || res.Exit == nil {
			t.Errorf("Run = %+v, %v", res, err)
		}
	}()
	for f := range got {
		if f.Type == mux.Signal {
			if sig, _ := mux.DecodeSignal(f.Payload); sig != int(syscall.SIGINT) {
				t.Errorf("forwarded signal %d", sig)
			}
			pw.Close() // now end stdin: the fake answers with the exit
		}
	}
	<-done
}

func TestRunDetachKeysInTTYMode(t *testing.T) {
	host, guest := net.Pipe()
	got := make(chan mux.Frame, 16)
	fakeSession(t, guest, got)
	res, err := Run(context.Background(), host, Options{
		Stdin: strings.NewReader("ls\r\x10\x11after"), TTY: true, Signals: make(chan os.Signal),
	})
	if err != nil || !res.Detached {
		t.Fatalf("Run = %+v, %v; want detached", res, err)
	}
	var sent []byte
	for f := range got {
		if f.Type == mux.Stdin {
			sent = append(sent, f.Payload...)
		}
		if f.Type == mux.StdinClose {
			t.Fatal("detach sent StdinClose")
		}
	}
	if string(sent) != "ls\r" {
		t.Fatalf("sent %q, want only the keys before the detach sequence", sent)
	}
}

func TestRunStreamLost(t *testing.T) {
	host, guest := net.Pipe()
	guest.Close()
	_, err := Run(context.Background(), host, Options{Signals: make(chan os.Signal)})
	if err == nil || !strings.Contains(err.Error(), "without an exit status") {
		t.Fatalf("err = %v", err)
	}
}
