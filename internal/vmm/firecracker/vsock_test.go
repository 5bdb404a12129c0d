package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vsockServer answers each connection with reply after reading the
// CONNECT line, then writes after (the guest's first bytes).
func vsockServer(t *testing.T, reply, after string, closeAfter bool) string {
	t.Helper()
	sock := filepath.Join(shortDir(t), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				if string(buf[:n]) != "CONNECT 10000\n" {
					c.Close()
					return
				}
				// One write: the reply and the stream's first bytes
				// arrive together, which is what over-reading would eat.
				c.Write([]byte(reply + after))
				if closeAfter {
					c.Close()
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	return sock
}

func TestVsockHandshake(t *testing.T) {
	ctx := context.Background()
	sock := vsockServer(t, "OK 1073741824\n", "HELLO", false)
	c, err := DialVsock(ctx, sock, 10000)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "HELLO" {
		t.Fatalf("bytes after OK lost: %q %v", buf, err)
	}
	c.Write([]byte("echo"))
	buf = make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "echo" {
		t.Fatalf("stream: %q %v", buf, err)
	}
}

func TestVsockHandshakeFailures(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name, reply string
		want        string
		refused     bool
	}{
		{"refused", "", "refused", true},
		{"garbage", "NOPE\n", `unexpected reply "NOPE\n"`, false},
		{"bad port", "OK x\n", "bad port", false},
		{"cut short", "OK 12", "cut short", true},
		{"too long", "OK " + strings.Repeat("1", 100), "longer than", false},
	}
	for _, c := range cases {
		sock := vsockServer(t, c.reply, "", true)
		_, err := DialVsock(ctx, sock, 10000)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
		if c.name == "refused" && !errors.Is(err, ErrVsockRefused) {
			t.Errorf("refused: not ErrVsockRefused: %v", err)
		}
	}
	if _, err := DialVsock(ctx, "/nonexistent/v.sock", 1); err == nil {
		t.Error("dial of a missing socket succeeded")
	}
}

func TestVsockHandshakeCancel(t *testing.T) {
	// A VMM that never answers: the handshake ends with ctx.
	sock := filepath.Join(shortDir(t), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(5 * time.Second)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := DialVsock(ctx, sock, 1); err == nil {
		t.Fatal("handshake with a silent peer succeeded")
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
}

func TestParseOK(t *testing.T) {
	good := map[string]uint32{"OK 0\n": 0, "OK 1073741824\n": 1073741824, "OK 4294967295\n": 4294967295}
	for in, want := range good {
		if got, err := ParseOK(in); err != nil || got != want {
			t.Errorf("ParseOK(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "OK\n", "OK \n", "OK 1", "ok 1\n", "OK -1\n", "OK +1\n", "OK 4294967296\n", "OK 1 \n", "OK  1\n", "OK 1\r\n", "FAIL 1\n"} {
		if _, err := ParseOK(in); err == nil {
			t.Errorf("ParseOK(%q) accepted", in)
		}
	}
}

func FuzzParseOK(f *testing.F) {
	for _, s := range []string{"OK 1073741824\n", "OK 0\n", "OK \n", "NOPE\n", "OK -1\n", "OK 99999999999999999999\n", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseOK(s)
		if err != nil {
			return
		}
		// Whatever parses must be exactly the canonical line.
		if want := "OK " + uitoa(n) + "\n"; s != want && !strings.HasPrefix(strings.TrimPrefix(s, "OK "), "0") {
			t.Fatalf("accepted %q as %d", s, n)
		}
	})
}

func FuzzReadLine(f *testing.F) {
	for _, s := range []string{"OK 1\nrest", "OK 1", strings.Repeat("x", 40), "\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := strings.NewReader(s)
		line, err := readLine(r, maxOKLine)
		if err != nil {
			return
		}
		// Never more than the line itself is consumed.
		if !strings.HasSuffix(line, "\n") || len(line) > maxOKLine || strings.Count(line, "\n") != 1 {
			t.Fatalf("bad line %q", line)
		}
		if rest, _ := io.ReadAll(r); line+string(rest) != s {
			t.Fatalf("over-read: line %q rest %q of %q", line, rest, s)
		}
	})
}

func FuzzParseFault(f *testing.F) {
	for _, s := range []string{`{"fault_message":"x"}`, `{"fault_message":null}`, `{}`, "text", `{"fault_message":1}`, ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := ParseFault(b)
		if len(got) > 600 && !strings.HasPrefix(strings.TrimSpace(string(b)), "{") {
			t.Fatalf("unbounded message: %d bytes", len(got))
		}
	})
}

func uitoa(n uint32) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}
