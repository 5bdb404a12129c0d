package egress

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// clientHello returns the first bytes a Go TLS client sends for sni.
func clientHello(t testing.TB, sni string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: sni == ""})
		_ = tc.Handshake()
		c.Close()
	}()
	buf := make([]byte, 64<<10)
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := s.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// splitRecords re-frames a single handshake record as two records.
func splitRecords(rec []byte, at int) []byte {
	body := rec[5:]
	a, b := body[:at], body[at:]
	out := []byte{0x16, rec[1], rec[2], byte(len(a) >> 8), byte(len(a))}
	out = append(out, a...)
	out = append(out, 0x16, rec[1], rec[2], byte(len(b)>>8), byte(len(b)))
	return append(out, b...)
}

func TestSniffTLS(t *testing.T) {
	hello := clientHello(t, "API.Example.com")
	if name, kind := Sniff(hello); name != "api.example.com" || kind != KindTLS {
		t.Fatalf("Sniff = %q %q", name, kind)
	}
	split := splitRecords(hello, 50)
	if name, kind := Sniff(split); name != "api.example.com" || kind != KindTLS {
		t.Fatalf("Sniff(split) = %q %q", name, kind)
	}
	// Every prefix: never a wrong name, and "need more" until the name.
	for i := 0; i < len(split); i++ {
		name, kind, done := sniff(split[:i])
		if name != "" && name != "api.example.com" {
			t.Fatalf("prefix %d gave %q", i, name)
		}
		if i > 0 && kind != KindTLS {
			t.Fatalf("prefix %d kind %q", i, kind)
		}
		if name == "" && done {
			t.Fatalf("prefix %d said done without the name", i)
		}
	}
	if name, kind := Sniff(clientHello(t, "")); name != "" || kind != KindTLS {
		t.Fatalf("no SNI: %q %q", name, kind)
	}
}

func TestSniffHTTP(t *testing.T) {
	cases := map[string]string{
		"GET / HTTP/1.1\r\nHost: Example.COM\r\n\r\n":                      "example.com",
		"POST /x HTTP/1.1\r\nUser-Agent: a\r\nhost:  h.test:8080 \r\n\r\n": "h.test",
		"GET / HTTP/1.1\r\nHost: 203.0.113.1:80\r\n\r\n":                   "",
		"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n":                 "",
		"GET / HTTP/1.0\r\n\r\n":                                           "",
	}
	for in, want := range cases {
		name, kind, done := sniff([]byte(in))
		if name != want || kind != KindHTTP || !done {
			t.Errorf("sniff(%q) = %q %q %v", in, name, kind, done)
		}
	}
	if _, kind, done := sniff([]byte("GET / HT")); kind != KindHTTP || done {
		t.Error("partial request line should wait")
	}
	if _, kind, done := sniff([]byte("SSH-2.0-OpenSSH\r\n")); kind != "" || !done {
		t.Error("SSH banner taken for HTTP")
	}
	if _, kind, done := sniff([]byte("HELLO world\r\n")); kind != "" || !done {
		t.Errorf("non-HTTP line: kind %q done %v", kind, done)
	}
}

func FuzzSniff(f *testing.F) {
	hello := clientHello(f, "fuzz.example.com")
	f.Add(hello)
	f.Add(splitRecords(hello, 7))
	f.Add(hello[:40])
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a.b\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, kind, _ := sniff(b)
		if name != "" && NormalizeName(name) != name {
			t.Fatalf("name %q not normalized", name)
		}
		if kind != "" && kind != KindTLS && kind != KindHTTP {
			t.Fatalf("kind %q", kind)
		}
		if bytes.HasPrefix(b, []byte{0x16}) && kind == KindHTTP {
			t.Fatal("TLS bytes taken for HTTP")
		}
	})
}
