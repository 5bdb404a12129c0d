package api

import (
	"fmt"
	"strings"
	"time"
)

// Egress modes of a VM (CreateVMRequest.Egress, VM.Egress).
const (
	EgressAll   = "all"
	EgressNone  = "none"
	EgressAllow = "allow"
)

// EgressView answers GET /v1/vms/{name}/egress: the policy a VM's
// connections are judged by right now.
type EgressView struct {
	VM   string `json:"vm"`
	Mode string `json:"mode"`
	// Policy names the VM's base policy; PolicyAllow and PolicyDeny are
	// its patterns. Allow and Deny are the VM's own patterns on top
	// (`vm create --allow`, `vm egress allow|deny`). Deny wins.
	Policy      string   `json:"policy,omitempty"`
	PolicyAllow []string `json:"policy_allow,omitempty"`
	PolicyDeny  []string `json:"policy_deny,omitempty"`
	Allow       []string `json:"allow,omitempty"`
	Deny        []string `json:"deny,omitempty"`
	// EffectiveAllow and EffectiveDeny are what the gateway applies.
	EffectiveAllow []string `json:"effective_allow,omitempty"`
	EffectiveDeny  []string `json:"effective_deny,omitempty"`
	Credentials    string   `json:"credentials,omitempty"`
	Brokered       []string `json:"brokered,omitempty"`
}

// EgressChange is the body of POST /v1/vms/{name}/egress: patterns to
// add to the VM's own allow and deny lists, and patterns to remove from
// both. It takes effect with the VM's next connection.
type EgressChange struct {
	Allow  []string `json:"allow,omitempty"`
	Deny   []string `json:"deny,omitempty"`
	Remove []string `json:"remove,omitempty"`
}

// EgressRecord is one connection (or DNS query) of a VM's egress log.
type EgressRecord struct {
	ID       int64     `json:"id"`
	Time     time.Time `json:"time"`
	VMID     string    `json:"vm_id"`
	VM       string    `json:"vm"`
	Session  string    `json:"session,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Process  string    `json:"process,omitempty"`
	Proto    string    `json:"proto"`
	Name     string    `json:"name,omitempty"`
	Addr     string    `json:"addr,omitempty"`
	Port     uint16    `json:"port,omitempty"`
	Decision string    `json:"decision"`
	Rule     string    `json:"rule,omitempty"`
	Policy   string    `json:"policy,omitempty"`
	Note     string    `json:"note,omitempty"`
	// BytesUp is guest to upstream, BytesDown upstream to guest.
	BytesUp    int64 `json:"bytes_up"`
	BytesDown  int64 `json:"bytes_down"`
	DurationMS int64 `json:"duration_ms"`
}

// Egress decisions of an EgressRecord.
const (
	EgressDecisionAllow = "allow"
	EgressDecisionDeny  = "deny"
	// EgressDecisionLeak: a credential placeholder was sent to a host it
	// does not belong to; the connection was blocked.
	EgressDecisionLeak = "leak"
)

// Denied says whether the connection was refused (denied or a leak).
func (r EgressRecord) Denied() bool { return r.Decision != EgressDecisionAllow }

// Target is "name:port", or "addr" when no name was known.
func (r EgressRecord) Target() string {
	host := r.Name
	if host == "" {
		return r.Addr
	}
	if r.Port != 0 {
		return fmt.Sprintf("%s:%d", host, r.Port)
	}
	return host
}

// EgressLogQuery selects records of GET /v1/vms/{name}/egress/log.
type EgressLogQuery struct {
	// Denied keeps refused connections only.
	Denied bool
	// After keeps records with a larger ID (to page or to follow).
	After int64
	// Limit caps the answer to the newest Limit records (0: the
	// daemon's default, at most MaxEgressLogLimit).
	Limit int
}

// MaxEgressLogLimit caps one answer of the egress log.
const MaxEgressLogLimit = 10000

// EgressLearned answers GET /v1/vms/{name}/egress/learn: the smallest
// allowlist that would have let the logged connections through.
type EgressLearned struct {
	VM    string   `json:"vm"`
	Allow []string `json:"allow"`
}

// EgressSummary says a VM's egress in a few words: "all", "none",
// "allow (policy agents)", "allow (policy agents + 2 rules)".
func (vm VM) EgressSummary() string {
	if vm.Egress != EgressAllow {
		return vm.Egress
	}
	s := "allow (policy " + vm.EgressPolicy
	if n := len(vm.EgressAllow) + len(vm.EgressDeny); n > 0 {
		s += fmt.Sprintf(" + %d rule%s", n, plural(n))
	}
	return s + ")"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// TOMLSnippet renders a learned allowlist as a config policy table.
func (l EgressLearned) TOMLSnippet(policy string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[egress.policy.%s]\nallow = [\n", policy)
	for _, a := range l.Allow {
		fmt.Fprintf(&b, "  %q,\n", a)
	}
	b.WriteString("]\n")
	return b.String()
}
