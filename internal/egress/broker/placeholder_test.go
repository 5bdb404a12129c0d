package broker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agentapi"
)

var placeholderRE = regexp.MustCompile(`^(sk-ant-oat01-|sk-ant-ort01-|sk-ant-api03-|sk-proj-|sk-|)` + Marker + `[0-9a-f]{32}$`)

// shapeOf replaces every string leaf by "s" so two documents compare by
// shape and by their non-string values.
func shapeOf(v any) any {
	switch x := v.(type) {
	case map[string]any:
		o := map[string]any{}
		for k, e := range x {
			o[k] = shapeOf(e)
		}
		return o
	case []any:
		o := make([]any, len(x))
		for i, e := range x {
			o[i] = shapeOf(e)
		}
		return o
	case string:
		return "s"
	}
	return v
}

func TestRewriteKeepsShapes(t *testing.T) {
	home, files := writeHome(t)
	r, err := Rewrite(home, files, map[string]string{"ANTHROPIC_API_KEY": realEnvKey, "OPENAI_API_KEY": realOpenAIKey, "GITHUB_TOKEN": "ghp_x", "EMPTY_ANTHROPIC": ""}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Files) != 4 {
		t.Fatalf("%d files", len(r.Files))
	}
	// Dropped: the entries the broker cannot broker, never copied.
	wantSkipped := []string{FileClaudeCredentials + "#mcpOAuth", FileOpencodeAuth + "#openrouter", "env:GITHUB_TOKEN"}
	for _, w := range wantSkipped {
		if !strings.Contains(strings.Join(r.Skipped, ","), w) {
			t.Errorf("skipped %v lacks %s", r.Skipped, w)
		}
	}
	for _, f := range r.Files {
		for _, s := range append(allReal, "secret-mcp", "sk-or-secret") {
			if strings.Contains(string(f.Data), s) {
				t.Fatalf("%s still holds a real secret", f.Path)
			}
		}
		var got, orig map[string]any
		if err := json.Unmarshal(f.Data, &got); err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		_ = json.Unmarshal([]byte(fixtures[f.Path]), &orig)
		delete(orig, "mcpOAuth")
		delete(orig, "openrouter")
		if !reflect.DeepEqual(shapeOf(got), shapeOf(orig)) {
			t.Errorf("%s changed shape:\n got %v\nwant %v", f.Path, shapeOf(got), shapeOf(orig))
		}
	}
	var cc map[string]map[string]any
	_ = json.Unmarshal(r.Files[0].Data, &cc)
	o := cc["claudeAiOauth"]
	if o["subscriptionType"] != "max" || o["expiresAt"] != float64(1700000000000) {
		t.Fatalf("non-secret fields changed: %v", o)
	}
	for _, e := range r.Secrets.Entries {
		if !placeholderRE.MatchString(e.Placeholder) {
			t.Errorf("placeholder %q of %s", e.Placeholder, e.Key)
		}
		if e.Env == "" && !filepath.IsAbs(e.File) {
			t.Errorf("%s: file %q not absolute", e.Key, e.File)
		}
	}
	if len(r.Env) != 2 || !strings.HasPrefix(r.Env["OPENAI_API_KEY"], "sk-proj-"+Marker) {
		t.Fatalf("env %v", r.Env)
	}
	// 2 claude oauth + 1 claude key + 4 opencode + 2 pi + 2 env.
	if n := len(r.Secrets.Entries); n != 11 {
		t.Fatalf("%d secrets", n)
	}
}

func TestRewriteStableAcrossReseeds(t *testing.T) {
	home, files := writeHome(t)
	env := map[string]string{"ANTHROPIC_API_KEY": realEnvKey}
	r1, err := Rewrite(home, files, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "broker-secrets.json")
	if err := SaveSecrets(p, r1.Secrets); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o", st.Mode().Perm())
	}
	raw, _ := os.ReadFile(p)
	for _, s := range allReal {
		if strings.Contains(string(raw), s) {
			t.Fatal("persisted secrets hold a real value")
		}
	}
	prev, err := LoadSecrets(p)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Rewrite(home, files, env, prev)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r1.Secrets, r2.Secrets) || !reflect.DeepEqual(r1.Files, r2.Files) || !reflect.DeepEqual(r1.Env, r2.Env) {
		t.Fatal("reseed changed the placeholders")
	}
	r3, _ := Rewrite(home, files, env, nil)
	if reflect.DeepEqual(r1.Env, r3.Env) {
		t.Fatal("a new VM got the same placeholders")
	}
	if s, err := LoadSecrets(filepath.Join(t.TempDir(), "missing")); s != nil || err != nil {
		t.Fatalf("missing file: %v %v", s, err)
	}
}

func TestRewriteDropsWhatItCannotParse(t *testing.T) {
	files := []agentapi.SeedFile{
		{Path: FileClaudeCredentials, Data: []byte(`{"claudeAiOauth":`)},
		{Path: FileClaudeJSON, Data: []byte(`[1,2]`)},
		{Path: FileOpencodeAuth, Data: []byte(`{"anthropic":{"type":"oauth","access":42}}`)},
		{Path: ".config/gh/hosts.yml", Data: []byte("oauth_token: gho_secret")},
	}
	r, err := Rewrite("/home/u", files, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Files) != 0 || len(r.Skipped) != 4 {
		t.Fatalf("files %d skipped %v", len(r.Files), r.Skipped)
	}
	// A .claude.json without a key is copied (it is settings, not a secret).
	r, _ = Rewrite("/home/u", []agentapi.SeedFile{{Path: FileClaudeJSON, Data: []byte(`{"numStartups":1}`)}}, nil, nil)
	if len(r.Files) != 1 || len(r.Secrets.Entries) != 0 {
		t.Fatalf("%+v", r)
	}
}

func TestVisiblePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"sk-ant-oat01-abc-def":   "sk-ant-oat01-",
		"sk-ant-api03-x":         "sk-ant-api03-",
		"sk-ant-zzz99-x":         "sk-ant-",
		"sk-proj-abc":            "sk-proj-",
		"sk-abc-def":             "sk-",
		"eyJhbGciOi.x.y":         "",
		"rt_abc":                 "",
		"sk-ant-oat01-" + Marker: "sk-ant-oat01-",
	} {
		if got := visiblePrefix(in); got != want {
			t.Errorf("visiblePrefix(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzRewriteFile(f *testing.F) {
	for rel, data := range fixtures {
		f.Add(rel, []byte(data))
	}
	f.Add(FileOpencodeAuth, []byte(`{"openai":{"type":"api","key":null}}`))
	f.Add(FileClaudeCredentials, []byte(`{"claudeAiOauth":{"accessToken":{"x":1}}}`))
	f.Fuzz(func(t *testing.T, rel string, data []byte) {
		r, err := Rewrite("/h", []agentapi.SeedFile{{Path: rel, Data: data}}, nil, nil)
		if err != nil {
			return
		}
		for _, g := range r.Files {
			if !json.Valid(g.Data) {
				t.Fatalf("invalid JSON out of %q", rel)
			}
		}
		for _, e := range r.Secrets.Entries {
			if !strings.Contains(e.Placeholder, Marker) || len(e.Path) == 0 {
				t.Fatalf("bad secret %+v", e)
			}
		}
	})
}

func TestRewriteKeyApprovals(t *testing.T) {
	cj := `{"customApiKeyResponses":{"approved":["` + realEnvKey[len(realEnvKey)-20:] + `","otherkeysuffix000000"],"rejected":[]},"primaryApiKey":"` + realAPIKey + `"}`
	files := []agentapi.SeedFile{
		{Path: FileClaudeJSON, Data: []byte(cj)},
		// Half-brokerable: dropped with all its secrets.
		{Path: FileOpencodeAuth, Data: []byte(`{"anthropic":{"type":"api","key":"sk-ant-api03-x"},"openai":{"type":"api","key":7}}`)},
	}
	r, err := Rewrite("/h", files, map[string]string{"ANTHROPIC_API_KEY": realEnvKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Resp map[string][]string `json:"customApiKeyResponses"`
	}
	if err := json.Unmarshal(r.Files[0].Data, &doc); err != nil {
		t.Fatal(err)
	}
	ph := r.Env["ANTHROPIC_API_KEY"]
	if got := doc.Resp["approved"]; len(got) != 1 || got[0] != ph[len(ph)-20:] {
		t.Fatalf("approved %v, want the placeholder's suffix only", got)
	}
	if strings.Contains(string(r.Files[0].Data), "otherkeysuffix") {
		t.Fatal("an approval of a key the VM does not get was copied")
	}
	if len(r.Files) != 1 || strings.Join(r.Secrets.Names(), ",") != ".claude.json#primaryApiKey,env:ANTHROPIC_API_KEY" {
		t.Fatalf("files %d names %v", len(r.Files), r.Secrets.Names())
	}
}
