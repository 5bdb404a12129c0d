package broker

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// realIDSig is the signature of the upstream's id_token: with a signed
// id_token a guest can exchange it at auth.openai.com for a real API key
// (grant_type token-exchange, as Codex does), a request with no
// placeholder in it that the broker forwards as is.
const realIDSig = "REALIDTOKENSIGNATUREmmmmmmmmmmmmmmmmm"

// The attack: refresh through the broker, keep the id_token of the
// answer. The guest must get no signed id_token.
func TestRefreshAnswerHasNoSignedIDToken(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token_type":"Bearer","access_token":"`+newAccess+`","refresh_token":"`+newRefresh+`","id_token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.`+realIDSig+`","expires_in":3600}`)
	})
	h := newHarness(t, up)
	vm, r := h.vm("1")
	c := h.client(vm)
	refresh := secretOf(t, r, FileClaudeCredentials+"#claudeAiOauth.refreshToken").Placeholder
	req, _ := http.NewRequest("POST", "https://console.anthropic.com/v1/oauth/token",
		strings.NewReader(`{"grant_type":"refresh_token","refresh_token":"`+refresh+`"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d %s", resp.StatusCode, raw)
	}
	if strings.Contains(string(raw), realIDSig) {
		t.Fatalf("the guest got the upstream's signed id_token: %s", raw)
	}
	if !strings.Contains(string(raw), `"id_token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.`) {
		t.Fatalf("the id_token's claims should stay readable: %s", raw)
	}
}

// A crash between writing the new CA's key and its certificate leaves
// the key alone. No guest can trust a certificate that was never
// written, so the next start must make a new CA, not refuse the broker
// (every VM in credentials mode broker would get no credentials).
func TestCACrashBetweenKeyAndCert(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	_ = ca
	if err := os.Remove(filepath.Join(dir, FileCACert)); err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatalf("after a crash between key and cert: %v", err)
	}
	if _, err := ca2.Leaf("api.anthropic.com"); err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil || string(again.CertPEM()) != string(ca2.CertPEM()) {
		t.Fatalf("the new CA was not kept: %v", err)
	}
}
