package broker

import "strings"

// Host is one row of the broker table: a host the broker terminates TLS
// for, the request headers where a placeholder is swapped for the real
// value, and the paths of its OAuth token endpoint.
type Host struct {
	Name    string
	Service string
	// Headers (lower case) may carry an access token or API key
	// placeholder of Service; it is swapped for the real value.
	Headers []string
	// TokenPaths are OAuth token endpoints: a POST whose body says
	// grant_type=refresh_token with a refresh placeholder of Service is
	// refreshed by the broker itself.
	TokenPaths []string
}

// Table is the broker table. Only port 443 is brokered.
//
//	host                   service    swapped headers           token endpoint
//	api.anthropic.com      anthropic  x-api-key, authorization  -
//	console.anthropic.com  anthropic  -                         /v1/oauth/token (Claude Code, opencode, pi)
//	platform.claude.com    anthropic  -                         /v1/oauth/token (newer Claude Code)
//	api.openai.com         openai     authorization             -
//	chatgpt.com            openai     authorization             - (ChatGPT-plan OAuth of opencode/pi)
//	auth.openai.com        openai     -                         /oauth/token (opencode/pi openai OAuth)
//
// A placeholder anywhere else in a request to these hosts (another
// header, the URL, a token endpoint body other than a refresh, a header
// of a host of another service) is a leak: 403, Decision "leak". Request
// bodies of API calls are not scanned: a conversation may quote a
// placeholder, which is harmless since it is never swapped there.
var Table = []Host{
	{Name: "api.anthropic.com", Service: ServiceAnthropic, Headers: []string{"x-api-key", "authorization"}},
	{Name: "console.anthropic.com", Service: ServiceAnthropic, TokenPaths: []string{"/v1/oauth/token"}},
	{Name: "platform.claude.com", Service: ServiceAnthropic, TokenPaths: []string{"/v1/oauth/token"}},
	{Name: "api.openai.com", Service: ServiceOpenAI, Headers: []string{"authorization"}},
	{Name: "chatgpt.com", Service: ServiceOpenAI, Headers: []string{"authorization"}},
	{Name: "auth.openai.com", Service: ServiceOpenAI, TokenPaths: []string{"/oauth/token"}},
}

// BrokeredPort is the only port the broker serves.
const BrokeredPort = 443

func lookupHost(name string) *Host {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	for i := range Table {
		if Table[i].Name == name {
			return &Table[i]
		}
	}
	return nil
}

func (h *Host) swaps(header string) bool {
	for _, x := range h.Headers {
		if strings.EqualFold(x, header) {
			return true
		}
	}
	return false
}

func (h *Host) isTokenPath(p string) bool {
	for _, x := range h.TokenPaths {
		if p == x {
			return true
		}
	}
	return false
}
