package egress

import (
	"bytes"
	"net"
	"strings"
)

// Kinds Sniff reports.
const (
	KindTLS  = "tls"
	KindHTTP = "http"
)

// Sniff finds the host name a connection's first bytes ask for: the SNI
// of a TLS ClientHello (also one split over several records, as far as
// first holds), or the Host header of an HTTP/1 request. kind is
// KindTLS or KindHTTP when the bytes look like one (name may still be
// ""), "" otherwise. The name is normalized; an address literal or an
// invalid name gives "".
func Sniff(first []byte) (name, kind string) {
	name, kind, _ = sniff(first)
	return name, kind
}

// sniff also says whether more bytes could change the answer.
func sniff(b []byte) (name, kind string, done bool) {
	if len(b) == 0 {
		return "", "", false
	}
	if b[0] == 0x16 {
		return sniffTLS(b)
	}
	if httpPrefix(b) {
		return sniffHTTP(b)
	}
	return "", "", true
}

// maxMethod bounds an HTTP method token (the longest common one is
// OPTIONS; CONNECT and PROPFIND fit too).
const maxMethod = 12

// httpPrefix reports whether b could start an HTTP/1 request line: an
// uppercase token then a space, or a prefix of one.
func httpPrefix(b []byte) bool {
	for i := 0; i < len(b) && i <= maxMethod; i++ {
		c := b[i]
		if c == ' ' {
			return i >= 3
		}
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return len(b) <= maxMethod
}

func sniffHTTP(b []byte) (string, string, bool) {
	rest := b
	first := true
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			// The request line alone may not yet say it is HTTP.
			return "", KindHTTP, false
		}
		line := bytes.TrimRight(rest[:i], "\r")
		rest = rest[i+1:]
		if first {
			first = false
			if !bytes.Contains(line, []byte(" HTTP/")) {
				return "", "", true
			}
			// An absolute-form (or CONNECT's authority-form) target names
			// the host, and servers route by it, not by Host (RFC 9112
			// 3.2.2): it is the name.
			if h, ok := requestTargetHost(line); ok {
				return NormalizeName(h), KindHTTP, true
			}
			continue
		}
		if len(line) == 0 {
			return "", KindHTTP, true // end of headers, no Host
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !strings.EqualFold(string(bytes.TrimSpace(k)), "host") {
			continue
		}
		host := string(bytes.TrimSpace(v))
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		return NormalizeName(host), KindHTTP, true
	}
}

// requestTargetHost returns the host of a request line's target when it
// is in absolute form ("http://host/...") or, for CONNECT, authority
// form ("host:port").
func requestTargetHost(line []byte) (string, bool) {
	method, rest, _ := bytes.Cut(line, []byte(" "))
	target, _, _ := bytes.Cut(rest, []byte(" "))
	t := string(target)
	if string(method) != "CONNECT" {
		i := strings.Index(t, "://")
		if i <= 0 {
			return "", false
		}
		t = t[i+3:]
		if j := strings.IndexAny(t, "/?#"); j >= 0 {
			t = t[:j]
		}
		if j := strings.LastIndexByte(t, '@'); j >= 0 {
			t = t[j+1:]
		}
	}
	if h, _, err := net.SplitHostPort(t); err == nil {
		t = h
	}
	return t, true
}

// maxHandshake bounds the ClientHello gathered from several records.
const maxHandshake = 1 << 16

func sniffTLS(b []byte) (string, string, bool) {
	// Gather the handshake bytes of consecutive handshake records.
	var hs []byte
	complete := true // every record seen was whole
	for len(b) > 0 {
		if b[0] != 0x16 {
			break
		}
		if len(b) < 5 {
			complete = false
			break
		}
		if b[1] != 3 {
			return "", "", true
		}
		n := int(b[3])<<8 | int(b[4])
		body := b[5:]
		if n < len(body) {
			body = body[:n]
		} else if n > len(body) {
			complete = false
		}
		hs = append(hs, body...)
		if len(hs) > maxHandshake {
			break
		}
		b = b[5+len(body):]
		if !complete {
			break
		}
	}
	name, ok, need := parseClientHello(hs)
	if !ok {
		return "", KindTLS, true
	}
	if need {
		// A record is cut short, or a later record carries the rest.
		return "", KindTLS, false
	}
	return name, KindTLS, true
}

// cursor reads a ClientHello; short is set when it ran out of bytes.
type cursor struct {
	b     []byte
	short bool
}

func (c *cursor) take(n int) []byte {
	if c.short || n > len(c.b) {
		c.short = true
		return nil
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) u8() int {
	v := c.take(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (c *cursor) u16() int {
	v := c.take(2)
	if v == nil {
		return 0
	}
	return int(v[0])<<8 | int(v[1])
}

// parseClientHello returns the SNI of the hello in hs. ok is false when
// hs is not a ClientHello; need when hs ends before the SNI (or the end
// of the extensions) was reached.
func parseClientHello(hs []byte) (name string, ok, need bool) {
	if len(hs) == 0 {
		return "", true, true
	}
	if hs[0] != 1 {
		return "", false, false
	}
	if len(hs) < 4 {
		return "", true, true
	}
	// The records may hold only part of the hello: read what is there,
	// and know whether running out means "truncated" or "malformed".
	n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
	body := hs[4:]
	truncated := len(body) < n
	if !truncated {
		body = body[:n]
	}
	c := &cursor{b: body}
	c.take(2)       // client_version
	c.take(32)      // random
	c.take(c.u8())  // session id
	c.take(c.u16()) // cipher suites
	c.take(c.u8())  // compression methods
	if !c.short && len(c.b) == 0 && !truncated {
		return "", true, false // no extensions at all (old clients)
	}
	extLen := c.u16()
	for extLen >= 4 && !c.short {
		typ := c.u16()
		data := c.take(c.u16())
		if c.short {
			break
		}
		extLen -= 4 + len(data)
		if typ == 0 {
			return serverName(data), true, false
		}
	}
	return "", true, c.short && truncated
}

// serverName reads the host_name entry of a server_name extension.
func serverName(data []byte) string {
	c := &cursor{b: data}
	list := c.take(c.u16())
	c = &cursor{b: list}
	for len(c.b) > 0 && !c.short {
		typ := c.u8()
		v := c.take(c.u16())
		if c.short {
			break
		}
		if typ == 0 {
			return NormalizeName(string(v))
		}
	}
	return ""
}
