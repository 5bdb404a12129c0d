package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/egress"
)

// lineConn drops the gateway's reply line from the front of the stream.
type lineConn struct {
	net.Conn
	br    *bufio.Reader
	once  sync.Once
	reply string
}

func (c *lineConn) Read(p []byte) (int, error) {
	var err error
	c.once.Do(func() { c.reply, err = c.br.ReadString('\n') })
	if err != nil {
		return 0, err
	}
	return c.br.Read(p)
}

func TestThroughGateway(t *testing.T) {
	var keyMu sync.Mutex
	var gotKey string
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keyMu.Lock()
		gotKey = r.Header.Get("x-api-key")
		keyMu.Unlock()
		io.WriteString(w, "ok")
	}))
	vm, res := h.vm("1")
	pol, err := egress.NewPolicy("agents", []string{"api.anthropic.com:443", "example.org:80"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var recs []egress.Record
	gw := egress.New(egress.Options{
		Resolve: map[string]string{"api.anthropic.com": h.upstream.Listener.Addr().String(), "example.org": h.upstream.Listener.Addr().String()},
		Policy:  func(string) (egress.Policy, string, bool) { return pol, "agents", true },
		Record:  func(r egress.Record) { mu.Lock(); recs = append(recs, r); mu.Unlock() },
		Broker:  h.b,
	})
	open := func(dst, then string) (net.Conn, *bufio.Reader) {
		g, c := net.Pipe()
		go gw.Handle(context.Background(), vm, g)
		line, _ := json.Marshal(agentapi.EgressOpen{Kind: "tcp", Dst: dst})
		c.Write(append(line, 10)) // before the client's first byte
		if then != "" {
			go c.Write([]byte(then))
		}
		return c, bufio.NewReader(c)
	}
	// Brokered: TLS to api.anthropic.com with the placeholder.
	c, br := open("203.0.113.7:443", "")
	lc := &lineConn{Conn: c, br: br}
	pool := x509.NewCertPool()
	pool.AddCert(h.ca.Certificate())
	tc := tls.Client(lc, &tls.Config{ServerName: "api.anthropic.com", RootCAs: pool})
	req, _ := http.NewRequest("GET", "https://api.anthropic.com/v1/models", nil)
	req.Header.Set("x-api-key", secretOf(t, res, FileClaudeJSON+"#primaryApiKey").Placeholder)
	req.Header.Set("Connection", "close")
	if err := req.Write(tc); err != nil {
		mu.Lock()
		t.Fatalf("%v reply %q recs %+v", err, lc.reply, recs)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	tc.Close()
	keyMu.Lock()
	defer keyMu.Unlock()
	if string(body) != "ok" || gotKey != realAPIKey || !strings.Contains(lc.reply, `"allow":true`) {
		t.Fatalf("body %q reply %q key ok=%v", body, lc.reply, gotKey == realAPIKey)
	}
	// Plain HTTP leak to a non-brokered host.
	c2, br2 := open("203.0.113.8:80", "GET / HTTP/1.1\r\nHost: example.org\r\nX-Key: "+secretOf(t, res, FileClaudeJSON+"#primaryApiKey").Placeholder+"\r\n\r\n")
	rest, _ := io.ReadAll(br2)
	t.Logf("leak answer: %q", rest)
	c2.Close()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("records: %+v", recs)
}
