package broker

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/egress"
)

func TestParseTokenRequest(t *testing.T) {
	for _, tc := range []struct {
		ct, body, grant, rt string
		err                 bool
	}{
		{"application/json", `{"grant_type":"refresh_token","refresh_token":"a"}`, "refresh_token", "a", false},
		{"", ` {"grant_type":"refresh_token","refresh_token":"a"}`, "refresh_token", "a", false},
		{"application/x-www-form-urlencoded", "grant_type=refresh_token&refresh_token=b&client_id=c", "refresh_token", "b", false},
		{"application/x-www-form-urlencoded", "grant_type=refresh_token&refresh_token=b&refresh_token=c", "refresh_token", "", false},
		{"application/json", `{"grant_type":1}`, "", "", false},
		{"application/json", `[]`, "", "", true},
		{"application/json", `{"a":1} {"b":2}`, "", "", true},
		{"application/x-www-form-urlencoded", "%zz", "", "", true},
	} {
		tr, err := parseTokenRequest(tc.ct, []byte(tc.body))
		if (err != nil) != tc.err {
			t.Fatalf("%q: err %v", tc.body, err)
		}
		if err != nil {
			continue
		}
		if tr.get("grant_type") != tc.grant || tr.get("refresh_token") != tc.rt {
			t.Fatalf("%q: got %q %q", tc.body, tr.get("grant_type"), tr.get("refresh_token"))
		}
	}
}

func FuzzParseTokenRequest(f *testing.F) {
	f.Add("application/json", []byte(`{"grant_type":"refresh_token","refresh_token":"sk-ant-ort01-banger-ph-0123456789abcdef0123456789abcdef","client_id":"x"}`))
	f.Add("application/x-www-form-urlencoded", []byte("grant_type=refresh_token&refresh_token=rt&client_id=app"))
	f.Add("application/json; charset=utf-8", []byte(`{"refresh_token":{"nested":[1,2,3]}}`))
	f.Add("", []byte("{"))
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		tr, err := parseTokenRequest(ct, body)
		if err != nil {
			return
		}
		_ = tr.get("grant_type")
		c := tr.clone()
		c.set("refresh_token", "real")
		out := c.encode()
		back, err := parseTokenRequest(map[bool]string{true: "application/json", false: "application/x-www-form-urlencoded"}[c.json != nil], out)
		if err != nil {
			t.Fatalf("re-encoded body does not parse: %v", err)
		}
		if back.get("refresh_token") != "real" {
			t.Fatalf("refresh_token lost in re-encoding")
		}
	})
}

// TestOpenAIFormRefresh: opencode's openai OAuth refreshes at
// auth.openai.com/oauth/token with a form body.
func TestOpenAIFormRefresh(t *testing.T) {
	var mu sync.Mutex
	var got url.Values
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		got = r.PostForm
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id_token":"idt","access_token":"eyJNEWOPENAI","refresh_token":"rt_NEWOPENAI","expires_in":3600}`)
	}))
	vm, r := h.vm("1")
	ph := secretOf(t, r, FileOpencodeAuth+"#openai.refresh").Placeholder
	acc := secretOf(t, r, FileOpencodeAuth+"#openai.access").Placeholder
	body := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {ph}, "client_id": {"app_x"}}.Encode()
	req, _ := http.NewRequest("POST", "https://auth.openai.com/oauth/token", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := h.client(vm).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(raw), "NEWOPENAI") || !strings.Contains(string(raw), acc) || !strings.Contains(string(raw), ph) {
		t.Fatalf("guest answer %d", resp.StatusCode)
	}
	mu.Lock()
	if got.Get("refresh_token") != realOCOpenAIRef || got.Get("client_id") != "app_x" {
		t.Fatal("upstream did not get the real refresh token with the guest's other fields")
	}
	mu.Unlock()
	data, _ := os.ReadFile(filepath.Join(h.home, FileOpencodeAuth))
	if !strings.Contains(string(data), `"access": "eyJNEWOPENAI"`) || !strings.Contains(string(data), `"accountId": "acc-1"`) || !strings.Contains(string(data), `"openrouter"`) {
		t.Fatalf("host file not rotated in place")
	}
}

// TestServeCountsBytes: Serve fills the record's byte counts when the
// guest's connection ends.
func TestServeCountsBytes(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 10000))
	}))
	vm, r := h.vm("1")
	g, c := net.Pipe()
	rec := &egress.Record{Decision: egress.DecisionAllow}
	done := make(chan error, 1)
	go func() {
		done <- h.b.Serve(context.Background(), vm, g, "api.anthropic.com", 443, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.upstream.Listener.Addr().String())
		}, rec)
	}()
	tr := &http.Transport{DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return tlsClient(ctx, h, c, "api.anthropic.com")
	}}
	req, _ := http.NewRequest("GET", "https://api.anthropic.com/v1/models", nil)
	req.Header.Set("x-api-key", secretOf(t, r, FileClaudeJSON+"#primaryApiKey").Placeholder)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	tr.CloseIdleConnections()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the guest hung up")
	}
	if rec.BytesDown < 10000 || rec.BytesUp == 0 || rec.Decision != egress.DecisionAllow {
		t.Fatalf("record %+v", rec)
	}
}

func TestServeEndsWithContext(t *testing.T) {
	h := newHarness(t, http.NotFoundHandler())
	vm, _ := h.vm("1")
	g, c := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- h.b.Serve(ctx, vm, g, "api.anthropic.com", 443, nil, &egress.Record{})
	}()
	if _, err := tlsClient(context.Background(), h, c, "api.anthropic.com"); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve ignores its context")
	}
}

// FuzzFindPlaceholder: the scan over guest bytes (Leak, headers, URLs)
// never panics and finds a known placeholder wherever it is.
func FuzzFindPlaceholder(f *testing.F) {
	b := New(Options{})
	ph := "sk-ant-api03-" + Marker + "0123456789abcdef0123456789abcdef"
	b.SetVM(egress.VMRef{ID: "v"}, &Secrets{Entries: []Secret{{Placeholder: ph, Key: "k", Cred: "k", Role: RoleAPIKey, Service: ServiceAnthropic, Env: "X"}}})
	f.Add([]byte("GET / HTTP/1.1\r\nx: " + ph + "\r\n"))
	f.Add([]byte(Marker + Marker + "0123"))
	f.Add([]byte("banger-ph"))
	f.Fuzz(func(t *testing.T, p []byte) {
		got := b.Leak(egress.VMRef{ID: "v"}, p)
		if want := strings.Contains(string(p), Marker+"0123456789abcdef0123456789abcdef"); got != want {
			t.Fatalf("Leak = %v, want %v", got, want)
		}
	})
}
