package broker

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bangerdev/banger/internal/agentapi"
)

// Marker is what every placeholder carries after the secret's visible
// prefix, followed by 32 hex digits.
const Marker = "banger-ph-"

const idHexLen = 32

// Auth files the broker understands, relative to the home directory
// (the same paths config.DefaultAuthFiles lists).
const (
	FileClaudeCredentials = ".claude/.credentials.json"
	FileClaudeJSON        = ".claude.json"
	FileOpencodeAuth      = ".local/share/opencode/auth.json"
	FilePiAuth            = ".pi/agent/auth.json"
)

// Services: which hosts a credential belongs to (see Table).
const (
	ServiceAnthropic = "anthropic"
	ServiceOpenAI    = "openai"
)

// Roles of a secret.
const (
	RoleAccess  = "access"  // OAuth access token: an API header
	RoleRefresh = "refresh" // OAuth refresh token: only a token endpoint's body
	RoleAPIKey  = "apikey"  // API key: an API header
)

// Secret is one brokered credential value: the placeholder the guest
// holds and where the host keeps the real value. It never holds the
// real value itself, so a Secrets can be persisted and logged by name.
type Secret struct {
	Placeholder string `json:"placeholder"`
	// Key identifies the value across reseeds: "<rel file>#<json path>"
	// or "env:<NAME>".
	Key string `json:"key"`
	// Cred groups the values of one OAuth credential (access, refresh,
	// expiry): "<rel file>#<json path of the object>"; for an API key it
	// equals Key.
	Cred    string `json:"cred"`
	Role    string `json:"role"`
	Service string `json:"service"`
	// File is the host file's absolute path and Path the JSON path of the
	// value in it; Env the variable, for an env secret.
	File string   `json:"file,omitempty"`
	Path []string `json:"path,omitempty"`
	// ExpiryPath is the JSON path of the credential's expiry (ms since
	// the epoch), for OAuth access and refresh secrets.
	ExpiryPath []string `json:"expiry_path,omitempty"`
	Env        string   `json:"env,omitempty"`
}

// Secrets are one VM's brokered credentials. Persist them with
// SaveSecrets in the VM's directory so a reboot reseeds the same
// placeholders.
type Secrets struct {
	Version int      `json:"version"`
	Entries []Secret `json:"entries"`
}

// Names are the brokered credentials as `vm show` lists them: where each
// lives, never a value. One name per credential.
func (s *Secrets) Names() []string {
	if s == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range s.Entries {
		if !seen[e.Cred] {
			seen[e.Cred] = true
			out = append(out, e.Cred)
		}
	}
	sort.Strings(out)
	return out
}

func (s *Secrets) byKey(key string) *Secret {
	if s == nil {
		return nil
	}
	for i := range s.Entries {
		if s.Entries[i].Key == key {
			return &s.Entries[i]
		}
	}
	return nil
}

// sibling finds the secret of the same credential with role.
func (s *Secrets) sibling(cred, role string) *Secret {
	for i := range s.Entries {
		if s.Entries[i].Cred == cred && s.Entries[i].Role == role {
			return &s.Entries[i]
		}
	}
	return nil
}

// LoadSecrets reads a VM's persisted secrets; a missing file is no
// secrets, not an error.
func LoadSecrets(p string) (*Secrets, error) {
	data, err := readPrivateFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s Secrets
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return &s, nil
}

// SaveSecrets writes s to p, 0600. It holds placeholders and host paths
// only, but placeholders are still the VM's keys to the broker.
func SaveSecrets(p string, s *Secrets) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writePrivateFile(p, data)
}

// Result is what a VM gets under credentials mode broker.
type Result struct {
	// Files are the auth files as the guest sees them: same shapes, every
	// secret a placeholder.
	Files []agentapi.SeedFile
	// Env maps API-key variables to placeholders.
	Env     map[string]string
	Secrets *Secrets
	// Skipped names the files and variables that are NOT given to the
	// guest because the broker cannot broker them (unknown file, not
	// JSON, unknown provider, unknown variable). Names only.
	Skipped []string
}

// Rewrite replaces every secret of the host's auth files (paths relative
// to home) and of env (variable → real value) by a placeholder. prev, the
// VM's earlier secrets, keeps placeholders stable across reseeds. A file
// or variable the broker cannot broker is left out entirely, never
// copied with its real content: under mode broker a real secret must not
// reach the guest.
func Rewrite(home string, files []agentapi.SeedFile, env map[string]string, prev *Secrets) (*Result, error) {
	r := &Result{Secrets: &Secrets{Version: 1}}
	rw := rewriter{home: home, prev: prev, out: r.Secrets, keySuffix: map[string]string{}}
	// Env first: .claude.json's key approvals refer to the env keys.
	names := make([]string, 0, len(env))
	for n := range env {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := env[n]
		if v == "" {
			continue
		}
		svc := envService(n)
		if svc == "" {
			r.Skipped = append(r.Skipped, "env:"+n)
			continue
		}
		ph, err := rw.placeholder(Secret{Key: "env:" + n, Cred: "env:" + n, Role: RoleAPIKey, Service: svc, Env: n}, v)
		if err != nil {
			return nil, err
		}
		if r.Env == nil {
			r.Env = map[string]string{}
		}
		r.Env[n] = ph
		rw.keySuffix[approvalSuffix(v)] = approvalSuffix(ph)
	}
	for _, f := range files {
		n := len(rw.out.Entries)
		data, skipped, err := rw.file(f.Path, f.Data)
		if err != nil {
			rw.out.Entries = rw.out.Entries[:n] // the file is not given: neither are its secrets
			r.Skipped = append(r.Skipped, f.Path)
			continue
		}
		r.Skipped = append(r.Skipped, skipped...)
		if data != nil {
			r.Files = append(r.Files, agentapi.SeedFile{Path: f.Path, Data: data})
		}
	}
	return r, nil
}

// envService says which service an API-key variable is for.
func envService(name string) string {
	u := strings.ToUpper(name)
	switch {
	case strings.Contains(u, "ANTHROPIC") || strings.Contains(u, "CLAUDE"):
		return ServiceAnthropic
	case strings.Contains(u, "OPENAI"):
		return ServiceOpenAI
	}
	return ""
}

// providerService maps an opencode/pi provider id to a broker service.
func providerService(p string) string {
	switch p {
	case "anthropic":
		return ServiceAnthropic
	case "openai", "openai-codex":
		return ServiceOpenAI
	}
	return ""
}

type rewriter struct {
	home string
	prev *Secrets
	out  *Secrets
	// keySuffix maps the approval suffix of each env key to its
	// placeholder's (see approvalSuffix).
	keySuffix map[string]string
}

// approvalSuffix is how Claude Code remembers an approved
// ANTHROPIC_API_KEY in .claude.json (customApiKeyResponses): its last 20
// characters. A piece of a real key, so it is rewritten like the key.
func approvalSuffix(key string) string {
	if len(key) <= 20 {
		return key
	}
	return key[len(key)-20:]
}

var errUnparsable = errors.New("not a file the broker understands")

// file rewrites one auth file. It returns nil data when nothing of the
// file should reach the guest, and the names of entries left out.
func (rw *rewriter) file(rel string, data []byte) ([]byte, []string, error) {
	clean := filepath.Clean(rel)
	abs := filepath.Join(rw.home, clean)
	doc, err := decodeJSON(data)
	if err != nil {
		return nil, nil, errUnparsable
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, nil, errUnparsable
	}
	var skipped []string
	switch clean {
	case FileClaudeCredentials:
		o, ok := obj["claudeAiOauth"].(map[string]any)
		if !ok {
			return nil, nil, errUnparsable
		}
		base := Secret{Cred: clean + "#claudeAiOauth", Service: ServiceAnthropic, File: abs,
			ExpiryPath: []string{"claudeAiOauth", "expiresAt"}}
		if err := rw.replace(o, "accessToken", base, RoleAccess, []string{"claudeAiOauth", "accessToken"}); err != nil {
			return nil, nil, err
		}
		if err := rw.replace(o, "refreshToken", base, RoleRefresh, []string{"claudeAiOauth", "refreshToken"}); err != nil {
			return nil, nil, err
		}
		// Any other top-level entry may be another credential the broker
		// does not know: leave it out rather than copy it.
		for _, k := range sortedKeys(obj) {
			if k != "claudeAiOauth" {
				delete(obj, k)
				skipped = append(skipped, clean+"#"+k)
			}
		}
	case FileClaudeJSON:
		if _, ok := obj["primaryApiKey"]; ok {
			base := Secret{Cred: clean + "#primaryApiKey", Service: ServiceAnthropic, File: abs}
			if err := rw.replace(obj, "primaryApiKey", base, RoleAPIKey, []string{"primaryApiKey"}); err != nil {
				return nil, nil, err
			}
		}
		// Approvals of env keys follow the key to its placeholder, so the
		// guest's Claude Code does not ask again; approvals of keys the
		// VM does not get are pieces of real keys and are dropped.
		if resp, ok := obj["customApiKeyResponses"].(map[string]any); ok {
			for _, k := range []string{"approved", "rejected"} {
				list, ok := resp[k].([]any)
				if !ok {
					continue
				}
				out := []any{}
				for _, e := range list {
					if s, ok := e.(string); ok {
						if ph, ok := rw.keySuffix[s]; ok {
							out = append(out, ph)
						}
					}
				}
				resp[k] = out
			}
		}
	case FileOpencodeAuth, FilePiAuth:
		// Sorted: the same files give the same secrets in the same order.
		for _, prov := range sortedKeys(obj) {
			o, ok := obj[prov].(map[string]any)
			svc := providerService(prov)
			if !ok || svc == "" {
				delete(obj, prov)
				skipped = append(skipped, clean+"#"+prov)
				continue
			}
			base := Secret{Cred: clean + "#" + prov, Service: svc, File: abs}
			typ, _ := o["type"].(string)
			var err error
			switch typ {
			case "oauth":
				base.ExpiryPath = []string{prov, "expires"}
				err = rw.replace(o, "access", base, RoleAccess, []string{prov, "access"})
				if err == nil {
					err = rw.replace(o, "refresh", base, RoleRefresh, []string{prov, "refresh"})
				}
			case "api":
				err = rw.replace(o, "key", base, RoleAPIKey, []string{prov, "key"})
			default:
				delete(obj, prov)
				skipped = append(skipped, clean+"#"+prov)
				continue
			}
			if err != nil {
				return nil, nil, err
			}
		}
	default:
		return nil, nil, errUnparsable
	}
	out, err := encodeJSON(obj)
	if err != nil {
		return nil, nil, err
	}
	return out, skipped, nil
}

// replace swaps o[field] (a string secret) for its placeholder; a
// missing field is fine, a non-string one makes the file unparsable.
func (rw *rewriter) replace(o map[string]any, field string, base Secret, role string, path []string) error {
	v, ok := o[field]
	if !ok {
		return nil
	}
	s, ok := v.(string)
	if !ok {
		return errUnparsable
	}
	if s == "" {
		return nil
	}
	sec := base
	sec.Role = role
	sec.Path = path
	sec.Key = base.Cred[:strings.IndexByte(base.Cred, '#')] + "#" + strings.Join(path, ".")
	if role == RoleAPIKey {
		sec.ExpiryPath = nil
	}
	ph, err := rw.placeholder(sec, s)
	if err != nil {
		return err
	}
	o[field] = ph
	return nil
}

// placeholder records sec, reusing the VM's earlier placeholder for the
// same key, and returns it.
func (rw *rewriter) placeholder(sec Secret, real string) (string, error) {
	if p := rw.prev.byKey(sec.Key); p != nil && strings.Contains(p.Placeholder, Marker) {
		sec.Placeholder = p.Placeholder
	} else {
		var id [idHexLen / 2]byte
		if _, err := rand.Read(id[:]); err != nil {
			return "", fmt.Errorf("placeholder: %w", err)
		}
		sec.Placeholder = visiblePrefix(real) + Marker + hex.EncodeToString(id[:])
	}
	rw.out.Entries = append(rw.out.Entries, sec)
	return sec.Placeholder, nil
}

// knownPrefixes are the public parts of credential formats, kept on the
// placeholder so tools that check a key's shape still accept it.
var knownPrefixes = []string{
	"sk-ant-oat01-", "sk-ant-ort01-", "sk-ant-api03-", "sk-ant-admin01-",
	"sk-proj-", "sk-svcacct-", "sk-admin-",
}

// visiblePrefix is the part of a secret that is a format marker, not
// secret: a known prefix, else "sk-ant-" or "sk-" (never more, so no
// random character of the secret is ever kept).
func visiblePrefix(s string) string {
	for _, p := range knownPrefixes {
		if strings.HasPrefix(s, p) {
			return p
		}
	}
	switch {
	case strings.HasPrefix(s, "sk-ant-"):
		return "sk-ant-"
	case strings.HasPrefix(s, "sk-"):
		return "sk-"
	}
	return ""
}

// decodeJSON parses a JSON document keeping numbers as written.
func decodeJSON(data []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("trailing data")
	}
	return v, nil
}

// encodeJSON writes v indented like the agents write their files. Keys
// come out sorted: order carries no meaning in these files.
func encodeJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	e.SetIndent("", "  ")
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// lookupPath follows path in doc.
func lookupPath(doc any, path []string) (any, bool) {
	cur := doc
	for _, k := range path {
		o, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = o[k]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// setPath sets path in doc, which must already hold every parent object.
func setPath(doc any, path []string, v any) bool {
	if len(path) == 0 {
		return false
	}
	parent, ok := lookupPath(doc, path[:len(path)-1])
	if !ok {
		return false
	}
	o, ok := parent.(map[string]any)
	if !ok {
		return false
	}
	o[path[len(path)-1]] = v
	return true
}

func sortedKeys(o map[string]any) []string {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
