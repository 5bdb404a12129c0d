package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fake upstreams for the egress gateway tests. Nothing here reaches the
// internet: the daemon's [egress] resolve sends every test name to these
// servers on loopback, and they present certificates from a test CA the
// daemon trusts through upstream_ca_file (like curl's --resolve and
// --cacert).

// egressNames are the names the test upstreams answer for.
var egressNames = []string{"allowed.test", "denied.test", "api.anthropic.com", "console.anthropic.com"}

// brokerOK is what the fake Messages endpoint answers once it saw a real
// credential; a test that finds it in the guest's output knows the
// request went through the broker with the real key.
const brokerOK = "banger-broker-ok"

type fakeUpstreams struct {
	caPEM       []byte
	caFile      string
	tlsAddr     string // HTTPS for egressNames
	plainAddr   string // plain HTTP (plain.test)
	realKey     string // ANTHROPIC_API_KEY on the host
	realAccess  string // the Claude OAuth access token on the host
	realRefresh string

	mu                    sync.Mutex
	keysSeen              []string // every x-api-key / authorization value the TLS side saw
	plainSeen             []string // every request line + headers the plain side saw
	refreshes             int      // refresh requests with the real refresh token
	newAccess, newRefresh string
}

// startFakeUpstreams serves on listeners from listen (the host's
// loopback, or a namespace's).
func startFakeUpstreams(t testing.TB, dir, marker string, listen func(addr string) net.Listener) *fakeUpstreams {
	t.Helper()
	f := &fakeUpstreams{
		realKey:     "sk-ant-api03-REALKEY" + marker,
		realAccess:  "sk-ant-oat01-REALACCESS" + marker,
		realRefresh: "sk-ant-ort01-REALREFRESH" + marker,
		newAccess:   "sk-ant-oat01-NEWACCESS" + marker,
		newRefresh:  "sk-ant-ort01-NEWREFRESH" + marker,
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "banger e2e upstream CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "upstream"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: egressNames, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	f.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	f.caFile = filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(f.caFile, f.caPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	tlsLn := tls.NewListener(listen("127.0.0.1:0"), &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}},
		NextProtos:   []string{"http/1.1"},
	})
	f.tlsAddr = tlsLn.Addr().String()
	tlsSrv := &http.Server{Handler: http.HandlerFunc(f.serveTLS), ReadHeaderTimeout: 10 * time.Second}
	go tlsSrv.Serve(tlsLn)

	plainLn := listen("127.0.0.1:0")
	f.plainAddr = plainLn.Addr().String()
	plainSrv := &http.Server{Handler: http.HandlerFunc(f.servePlain), ReadHeaderTimeout: 10 * time.Second}
	go plainSrv.Serve(plainLn)
	t.Cleanup(func() { tlsSrv.Close(); plainSrv.Close() })
	return f
}

// resolveTOML is the [egress] resolve table that points every test name
// at these servers.
func (f *fakeUpstreams) resolveTOML() string {
	var parts []string
	for _, n := range egressNames {
		parts = append(parts, fmt.Sprintf("%q = %q", n, f.tlsAddr))
	}
	parts = append(parts, fmt.Sprintf("%q = %q", "plain.test", f.plainAddr))
	return "{ " + strings.Join(parts, ", ") + " }"
}

func (f *fakeUpstreams) credentialOK(r *http.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	key, auth := r.Header.Get("x-api-key"), r.Header.Get("authorization")
	for _, v := range []string{key, auth} {
		if v != "" {
			f.keysSeen = append(f.keysSeen, v)
		}
	}
	return key == f.realKey || auth == "Bearer "+f.realAccess || auth == "Bearer "+f.newAccess
}

func (f *fakeUpstreams) serveTLS(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	switch {
	case r.Host == "allowed.test" || r.Host == "denied.test":
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	case r.Host == "console.anthropic.com" && r.URL.Path == "/v1/oauth/token":
		var req struct {
			GrantType    string `json:"grant_type"`
			RefreshToken string `json:"refresh_token"`
		}
		_ = json.Unmarshal(body, &req)
		f.mu.Lock()
		ok := req.GrantType == "refresh_token" && (req.RefreshToken == f.realRefresh || req.RefreshToken == f.newRefresh)
		if ok {
			f.refreshes++
		}
		f.mu.Unlock()
		if !ok {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("content-type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": f.newAccess, "refresh_token": f.newRefresh,
			"expires_in": 28800, "token_type": "Bearer",
		})
	case r.Host == "api.anthropic.com" && r.URL.Path == "/v1/messages":
		if !f.credentialOK(r) {
			w.Header().Set("content-type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`)
			return
		}
		var req struct {
			Stream bool `json:"stream"`
		}
		_ = json.Unmarshal(body, &req)
		if req.Stream {
			writeMessagesStream(w)
			return
		}
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"id":"msg_e2e","type":"message","role":"assistant","model":"claude-e2e","content":[{"type":"text","text":"`+brokerOK+`"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":3}}`)
	case r.Host == "api.anthropic.com":
		// Claude Code asks a few side endpoints; an empty object keeps it
		// going.
		f.credentialOK(r)
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{}`)
	default:
		http.NotFound(w, r)
	}
}

// writeMessagesStream answers like the Messages API with stream=true.
func writeMessagesStream(w http.ResponseWriter) {
	w.Header().Set("content-type", "text/event-stream")
	w.Header().Set("cache-control", "no-cache")
	events := []struct{ name, data string }{
		{"message_start", `{"type":"message_start","message":{"id":"msg_e2e","type":"message","role":"assistant","model":"claude-e2e","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}`},
		{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"` + brokerOK + `"}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":0}`},
		{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}`},
		{"message_stop", `{"type":"message_stop"}`},
	}
	fl, _ := w.(http.Flusher)
	for _, e := range events {
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.name, e.data)
		if fl != nil {
			fl.Flush()
		}
	}
}

func (f *fakeUpstreams) servePlain(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s\n", r.Method, r.Host, r.URL)
	r.Header.Write(&b)
	f.mu.Lock()
	f.plainSeen = append(f.plainSeen, b.String())
	f.mu.Unlock()
	if r.URL.Path == "/blob" {
		// The download benchmark's payload: zeros, streamed.
		n := int64(200 << 20)
		w.Header().Set("content-length", fmt.Sprint(n))
		io.CopyN(w, zeroReader{}, n)
		return
	}
	io.WriteString(w, "hello from plain.test\n")
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func (f *fakeUpstreams) seen() (keys, plain []string, refreshes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.keysSeen...), append([]string(nil), f.plainSeen...), f.refreshes
}

// hostListen listens on the host's own network namespace.
func hostListen(t testing.TB) func(string) net.Listener {
	return func(addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
}
