package broker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/egress"
)

// Real secrets of the fixtures; none may ever show up in a guest file,
// a guest response or a log line.
const (
	realAccess      = "sk-ant-oat01-REALACCESSaaaaaaaaaaaaaaaaaaaaaaaa"
	realRefresh     = "sk-ant-ort01-REALREFRESHbbbbbbbbbbbbbbbbbbbbbbb"
	realAPIKey      = "sk-ant-api03-REALAPIKEYccccccccccccccccccccccccc"
	realOpenAIKey   = "sk-proj-REALOPENAIdddddddddddddddddddddddddd"
	realOCAccess    = "sk-ant-oat01-REALOCACCESSeeeeeeeeeeeeeeeeeeee"
	realOCRefresh   = "sk-ant-ort01-REALOCREFRESHfffffffffffffffffff"
	realOCOpenAIAcc = "eyJREALOCOPENAIACCESSgggggggggggggggggggggg"
	realOCOpenAIRef = "rt_REALOCOPENAIREFRESHhhhhhhhhhhhhhhhhhhh"
	realPiKey       = "sk-ant-api03-REALPIKEYiiiiiiiiiiiiiiiiiiiiii"
	realEnvKey      = "sk-ant-api03-REALENVKEYjjjjjjjjjjjjjjjjjjjjj"
	newAccess       = "sk-ant-oat01-NEWACCESSkkkkkkkkkkkkkkkkkkkkkkk"
	newRefresh      = "sk-ant-ort01-NEWREFRESHlllllllllllllllllllll"
)

var allReal = []string{realAccess, realRefresh, realAPIKey, realOpenAIKey, realOCAccess, realOCRefresh,
	realOCOpenAIAcc, realOCOpenAIRef, realPiKey, realEnvKey, newAccess, newRefresh,
	"REALACCESS", "REALREFRESH", "REALAPIKEY", "NEWACCESS", "NEWREFRESH"}

var fixtures = map[string]string{
	FileClaudeCredentials: `{"claudeAiOauth":{"accessToken":"` + realAccess + `","refreshToken":"` + realRefresh + `","expiresAt":1700000000000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"},"mcpOAuth":{"x":{"accessToken":"secret-mcp"}}}`,
	FileClaudeJSON:        `{"numStartups":12,"primaryApiKey":"` + realAPIKey + `","projects":{"/root":{"allowedTools":[]}},"oauthAccount":{"emailAddress":"a@b.c"}}`,
	FileOpencodeAuth:      `{"anthropic":{"type":"oauth","access":"` + realOCAccess + `","refresh":"` + realOCRefresh + `","expires":1700000000000},"openai":{"type":"oauth","access":"` + realOCOpenAIAcc + `","refresh":"` + realOCOpenAIRef + `","expires":1700000000000,"accountId":"acc-1"},"openrouter":{"type":"api","key":"sk-or-secret"}}`,
	FilePiAuth:            `{"anthropic":{"type":"api","key":"` + realPiKey + `"},"openai":{"type":"api","key":"` + realOpenAIKey + `"}}`,
}

func writeHome(t *testing.T) (string, []agentapi.SeedFile) {
	t.Helper()
	home := t.TempDir()
	var files []agentapi.SeedFile
	for _, rel := range []string{FileClaudeCredentials, FileClaudeJSON, FileOpencodeAuth, FilePiAuth} {
		p := filepath.Join(home, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(fixtures[rel]), 0o640); err != nil {
			t.Fatal(err)
		}
		files = append(files, agentapi.SeedFile{Path: rel, Data: []byte(fixtures[rel])})
	}
	return home, files
}

// syncBuf is a log sink the test can search for secrets.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness: a broker, a fake upstream with its own CA for every table
// host on 127.0.0.1, and guest clients trusting the broker's CA.
type harness struct {
	t        *testing.T
	home     string
	files    []agentapi.SeedFile
	b        *Broker
	ca       *CA
	upstream *httptest.Server
	logs     *syncBuf

	mu      sync.Mutex
	records []*egress.Record
}

func newHarness(t *testing.T, upstream http.Handler) *harness {
	t.Helper()
	home, files := writeHome(t)
	ca, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	upCA, err := LoadOrCreateCA(filepath.Join(t.TempDir(), "upstream-ca"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(upstream)
	srv.TLS = &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return upCA.Leaf(h.ServerName) }}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(upCA.Certificate())
	logs := &syncBuf{}
	b := New(Options{
		CA:      ca,
		RootCAs: roots,
		Getenv: func(n string) string {
			if n == "ANTHROPIC_API_KEY" {
				return realEnvKey
			}
			return ""
		},
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	h := &harness{t: t, home: home, files: files, b: b, ca: ca, upstream: srv, logs: logs}
	t.Cleanup(func() {
		out := logs.String()
		for _, s := range allReal {
			if strings.Contains(out, s) {
				t.Errorf("a real secret (%.20s...) appears in the broker's log", s)
			}
		}
	})
	return h
}

// vm rewrites the fixtures for a new VM and registers it.
func (h *harness) vm(id string) (egress.VMRef, *Result) {
	h.t.Helper()
	r, err := Rewrite(h.home, h.files, map[string]string{"ANTHROPIC_API_KEY": realEnvKey}, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	vm := egress.VMRef{ID: id, Name: "vm-" + id}
	h.b.SetVM(vm, r.Secrets)
	return vm, r
}

// client is a guest HTTP client: every connection it opens is served by
// the broker over a pipe, as the gateway would hand it over.
func (h *harness) client(vm egress.VMRef) *http.Client {
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			name, _, _ := net.SplitHostPort(addr)
			g, c := net.Pipe()
			rec := &egress.Record{Decision: egress.DecisionAllow, Name: name}
			h.mu.Lock()
			h.records = append(h.records, rec)
			h.mu.Unlock()
			dial := func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", h.upstream.Listener.Addr().String())
			}
			go func() { _ = h.b.Serve(context.Background(), vm, g, name, 443, dial, rec) }()
			return tlsClient(ctx, h, c, name)
		},
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (h *harness) leaks() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.records {
		if r.Decision == egress.DecisionLeak {
			n++
		}
	}
	return n
}

func secretOf(t *testing.T, r *Result, key string) Secret {
	t.Helper()
	s := r.Secrets.byKey(key)
	if s == nil {
		t.Fatalf("no secret %s", key)
	}
	return *s
}

func TestAPIKeyAndOAuthHeadersSwapped(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Host+" "+r.Header.Get("X-Api-Key")+"|"+r.Header.Get("Authorization"))
		mu.Unlock()
		io.WriteString(w, `{"ok":true}`)
	}))
	vm, r := h.vm("1")
	c := h.client(vm)
	apiKey := secretOf(t, r, FileClaudeJSON+"#primaryApiKey").Placeholder
	access := secretOf(t, r, FileClaudeCredentials+"#claudeAiOauth.accessToken").Placeholder
	envKey := r.Env["ANTHROPIC_API_KEY"]
	if !strings.HasPrefix(apiKey, "sk-ant-api03-"+Marker) || !strings.HasPrefix(access, "sk-ant-oat01-"+Marker) {
		t.Fatalf("placeholders lost their prefix: %s %s", apiKey, access)
	}
	for _, hd := range [][2]string{{"x-api-key", apiKey}, {"Authorization", "Bearer " + access}, {"x-api-key", envKey}} {
		req, _ := http.NewRequest("POST", "https://api.anthropic.com/v1/messages", strings.NewReader(`{"model":"x"}`))
		req.Header.Set(hd[0], hd[1])
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != `{"ok":true}` {
			t.Fatalf("status %d body %s", resp.StatusCode, body)
		}
	}
	want := []string{"api.anthropic.com " + realAPIKey + "|", "api.anthropic.com |Bearer " + realAccess, "api.anthropic.com " + realEnvKey + "|"}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Fatalf("upstream saw the wrong credentials (%d requests)", len(seen))
	}
	if h.leaks() != 0 {
		t.Fatal("leak recorded on a clean request")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var up, down int64
	for _, r := range h.records {
		up += r.BytesUp
		down += r.BytesDown
	}
	_ = up // counted when Serve returns; the keep-alive connection may still be open
}

func TestPlaceholderOutsideAllowedHeadersIsLeak(t *testing.T) {
	var hits atomic.Int32
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	vm, r := h.vm("1")
	c := h.client(vm)
	apiKey := secretOf(t, r, FileClaudeJSON+"#primaryApiKey").Placeholder
	openai := secretOf(t, r, FilePiAuth+"#openai.key").Placeholder
	refresh := secretOf(t, r, FileClaudeCredentials+"#claudeAiOauth.refreshToken").Placeholder
	cases := []struct {
		name, url, header, value string
	}{
		{"other header", "https://api.anthropic.com/v1/messages", "x-debug", apiKey},
		{"url", "https://api.anthropic.com/v1/messages?k=" + apiKey, "", ""},
		{"wrong service", "https://api.anthropic.com/v1/messages", "authorization", "Bearer " + openai},
		{"refresh token as header", "https://api.anthropic.com/v1/messages", "authorization", "Bearer " + refresh},
		{"token host header", "https://console.anthropic.com/v1/oauth/token", "authorization", "Bearer " + apiKey},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest("GET", tc.url, nil)
		if tc.header != "" {
			req.Header.Set(tc.header, tc.value)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "blocked") {
			t.Fatalf("%s: status %d, want 403", tc.name, resp.StatusCode)
		}
	}
	if hits.Load() != 0 {
		t.Fatal("a leaking request reached the upstream")
	}
	if h.leaks() != len(cases) {
		t.Fatalf("%d leak records, want %d", h.leaks(), len(cases))
	}
	h.mu.Lock()
	note := h.records[0].Note
	h.mu.Unlock()
	if !strings.Contains(note, FileClaudeJSON) || strings.Contains(note, Marker) {
		t.Fatalf("note %q should name the credential, not the placeholder", note)
	}
}

func TestAnotherVMsPlaceholderIsLeak(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	vm1, _ := h.vm("1")
	_, r2 := h.vm("2")
	req, _ := http.NewRequest("GET", "https://api.anthropic.com/v1/models", nil)
	req.Header.Set("x-api-key", secretOf(t, r2, FileClaudeJSON+"#primaryApiKey").Placeholder)
	resp, err := h.client(vm1).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if !h.b.Leak(vm1, []byte("GET / HTTP/1.1\r\nx: "+secretOf(t, r2, FileClaudeJSON+"#primaryApiKey").Placeholder+"\r\n")) {
		t.Fatal("Leak misses another VM's placeholder")
	}
	if h.b.Leak(vm1, []byte("GET / HTTP/1.1\r\nx: "+Marker+"0123456789abcdef0123456789abcdef\r\n")) {
		t.Fatal("Leak flags an unknown marker")
	}
}

func TestSSEStreamed(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {}\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "event: message_stop\ndata: {}\n\n")
	}))
	vm, r := h.vm("1")
	req, _ := http.NewRequest("POST", "https://api.anthropic.com/v1/messages", strings.NewReader(`{"stream":true}`))
	req.Header.Set("x-api-key", secretOf(t, r, FileClaudeJSON+"#primaryApiKey").Placeholder)
	resp, err := h.client(vm).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "event: message_start\n" {
		t.Fatalf("first event not streamed before the upstream finished: %q %v", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || !strings.Contains(string(rest), "message_stop") {
		t.Fatalf("rest %q: %v\nlog:\n%s", rest, err, h.logs.String())
	}
}

// tokenServer is a fake OAuth token endpoint counting refreshes.
type tokenServer struct {
	refreshes atomic.Int32
	delay     time.Duration
	mu        sync.Mutex
	gotToken  []string
}

func (ts *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/oauth/token" {
		var body map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		ts.mu.Lock()
		ts.gotToken = append(ts.gotToken, body["refresh_token"])
		ts.mu.Unlock()
		if body["grant_type"] != "refresh_token" || body["refresh_token"] != realRefresh {
			w.WriteHeader(400)
			io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		ts.refreshes.Add(1)
		time.Sleep(ts.delay)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token_type":"Bearer","access_token":"`+newAccess+`","refresh_token":"`+newRefresh+`","expires_in":28800,"scope":"user:inference user:profile"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"auth":%q}`, r.Header.Get("Authorization"))
}

func refreshReq(t *testing.T, c *http.Client, placeholder string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", "https://console.anthropic.com/v1/oauth/token",
		strings.NewReader(`{"grant_type":"refresh_token","refresh_token":"`+placeholder+`","client_id":"9d1c250a"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, s := range allReal {
		if strings.Contains(string(raw), s) {
			t.Fatalf("the guest got a real token in the refresh answer")
		}
	}
	var doc map[string]any
	_ = json.Unmarshal(raw, &doc)
	return resp.StatusCode, doc
}

func TestRefreshRotatesHostFile(t *testing.T) {
	ts := &tokenServer{}
	h := newHarness(t, ts)
	vm, r := h.vm("1")
	c := h.client(vm)
	refresh := secretOf(t, r, FileClaudeCredentials+"#claudeAiOauth.refreshToken").Placeholder
	access := secretOf(t, r, FileClaudeCredentials+"#claudeAiOauth.accessToken").Placeholder
	status, doc := refreshReq(t, c, refresh)
	if status != 200 || doc["access_token"] != access || doc["refresh_token"] != refresh || doc["scope"] != "user:inference user:profile" {
		t.Fatalf("guest answer %d %v", status, doc)
	}
	p := filepath.Join(h.home, FileClaudeCredentials)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("host file mode %o, want 640", st.Mode().Perm())
	}
	raw, _ := os.ReadFile(p)
	var f map[string]map[string]any
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	o := f["claudeAiOauth"]
	if o["accessToken"] != newAccess || o["refreshToken"] != newRefresh || o["subscriptionType"] != "max" || f["mcpOAuth"] == nil {
		t.Fatal("host file not rotated, or lost its other fields")
	}
	if exp := int64(o["expiresAt"].(float64)); time.UnixMilli(exp).Before(time.Now().Add(7 * time.Hour)) {
		t.Fatalf("expiresAt %d not moved", exp)
	}
	// The next API call uses the new access token at once.
	req, _ := http.NewRequest("GET", "https://api.anthropic.com/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+access)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if got["auth"] != "Bearer "+newAccess {
		t.Fatal("API call did not use the refreshed token")
	}
	// A second refresh at once is answered from the host file: a guest
	// cannot keep rotating the host's tokens.
	ts.mu.Lock()
	n := len(ts.gotToken)
	ts.mu.Unlock()
	status, doc = refreshReq(t, c, refresh)
	ts.mu.Lock()
	if status != 200 || doc["access_token"] != access || len(ts.gotToken) != n {
		t.Fatalf("an immediate second refresh: status %d, %d upstream refreshes (want %d)", status, len(ts.gotToken), n)
	}
	ts.mu.Unlock()
	// Later, a second refresh by the same VM goes upstream again with the
	// new token, which the fake refuses: the guest sees the error, scrubbed.
	h.b.mu.Lock()
	h.b.minRefreshInterval = 0
	h.b.mu.Unlock()
	status, _ = refreshReq(t, c, refresh)
	if status != 400 {
		t.Fatalf("second refresh status %d", status)
	}
	ts.mu.Lock()
	if ts.gotToken[len(ts.gotToken)-1] != newRefresh {
		t.Fatal("second refresh did not use the rotated refresh token")
	}
	ts.mu.Unlock()
}

func TestConcurrentRefreshOnce(t *testing.T) {
	ts := &tokenServer{delay: 300 * time.Millisecond}
	h := newHarness(t, ts)
	vm1, r1 := h.vm("1")
	vm2, r2 := h.vm("2")
	c1, c2 := h.client(vm1), h.client(vm2)
	key := FileClaudeCredentials + "#claudeAiOauth.refreshToken"
	var wg sync.WaitGroup
	results := make([]map[string]any, 2)
	for i, c := range []*http.Client{c1, c2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ph := secretOf(t, []*Result{r1, r2}[i], key).Placeholder
			status, doc := refreshReq(t, c, ph)
			if status != 200 {
				t.Errorf("vm %d: status %d", i+1, status)
			}
			results[i] = doc
		}()
	}
	wg.Wait()
	if n := ts.refreshes.Load(); n != 1 {
		t.Fatalf("upstream saw %d refreshes, want 1", n)
	}
	for i, r := range []*Result{r1, r2} {
		if results[i]["refresh_token"] != secretOf(t, r, key).Placeholder {
			t.Fatalf("vm %d got another VM's placeholder", i+1)
		}
	}
}

func TestRefreshReusesTokenChangedSince(t *testing.T) {
	ts := &tokenServer{}
	h := newHarness(t, ts)
	vm1, r1 := h.vm("1")
	vm2, r2 := h.vm("2")
	key := FileClaudeCredentials + "#claudeAiOauth.refreshToken"
	if status, _ := refreshReq(t, h.client(vm1), secretOf(t, r1, key).Placeholder); status != 200 {
		t.Fatal(status)
	}
	status, doc := refreshReq(t, h.client(vm2), secretOf(t, r2, key).Placeholder)
	if status != 200 || doc["access_token"] != secretOf(t, r2, FileClaudeCredentials+"#claudeAiOauth.accessToken").Placeholder {
		t.Fatalf("vm2: %d %v", status, doc)
	}
	if n := ts.refreshes.Load(); n != 1 {
		t.Fatalf("upstream saw %d refreshes, want 1", n)
	}
	if e, _ := doc["expires_in"].(float64); e < 28000 {
		t.Fatalf("expires_in %v", doc["expires_in"])
	}
}

func TestTokenEndpointNonRefreshPlaceholderIsLeak(t *testing.T) {
	ts := &tokenServer{}
	h := newHarness(t, ts)
	vm, r := h.vm("1")
	access := secretOf(t, r, FileClaudeCredentials+"#claudeAiOauth.accessToken").Placeholder
	status, _ := refreshReq(t, h.client(vm), access)
	if status != http.StatusForbidden || h.leaks() != 1 || ts.refreshes.Load() != 0 {
		t.Fatalf("status %d leaks %d", status, h.leaks())
	}
}

func TestInterceptsAndNames(t *testing.T) {
	h := newHarness(t, http.NotFoundHandler())
	vm, r := h.vm("1")
	if !h.b.Intercepts(vm, "api.anthropic.com", 443) || !h.b.Intercepts(vm, "auth.openai.com", 443) {
		t.Fatal("brokered hosts not intercepted")
	}
	if h.b.Intercepts(vm, "api.anthropic.com", 80) || h.b.Intercepts(vm, "example.com", 443) || h.b.Intercepts(egress.VMRef{ID: "x"}, "api.anthropic.com", 443) {
		t.Fatal("intercepts too much")
	}
	names := strings.Join(r.Secrets.Names(), ",")
	for _, s := range allReal {
		if strings.Contains(names, s) {
			t.Fatal("names carry a secret")
		}
	}
	if !strings.Contains(names, ".claude.json#primaryApiKey") || !strings.Contains(names, "env:ANTHROPIC_API_KEY") {
		t.Fatalf("names %s", names)
	}
	h.b.RemoveVM(vm)
	if h.b.Intercepts(vm, "api.anthropic.com", 443) {
		t.Fatal("removed VM still intercepted")
	}
}

// tlsClient is the guest's TLS: it trusts the broker CA and offers h2
// too, which the broker must decline.
func tlsClient(ctx context.Context, h *harness, c net.Conn, name string) (*tls.Conn, error) {
	pool := x509.NewCertPool()
	pool.AddCert(h.ca.Certificate())
	tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		h.t.Errorf("ALPN %q, want http/1.1", p)
	}
	return tc, nil
}
