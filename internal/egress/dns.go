package egress

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSTTL is the TTL of the fake answers: short, so a policy change
// reaches a guest's caches within a minute.
const DNSTTL = 60

// EDNS0 Extended DNS Error (RFC 8914): option code 15, info-code 15
// "Blocked".
const (
	ednsOptionEDE = 15
	edeBlocked    = 15
)

// DenyMessage is the explanation every denial carries: where the guest
// will read it (an HTTP 403 body, the agent's journal, the EDE text of
// an NXDOMAIN), it names the host, the policy and the command that
// allows it.
func DenyMessage(vmName, policyLabel, host string, port uint16) string {
	target := host
	if port != 0 {
		target = host + ":" + strconv.Itoa(int(port))
		if len(host) > 0 && host[0] != '[' && hasColon(host) {
			target = "[" + host + "]:" + strconv.Itoa(int(port))
		}
	}
	return fmt.Sprintf("banger egress: %s is not allowed by policy %q of VM %q; allow it with: banger vm egress allow %s %s",
		target, policyLabel, vmName, vmName, host)
}

func hasColon(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return true
		}
	}
	return false
}

// AnswerDNS answers one DNS query (the message, without the TCP length
// prefix) for a VM under pol: an allowed name gets an A record with its
// fake address from ips, other types of an allowed name an empty
// NOERROR, a denied or invalid name NXDOMAIN with an Extended DNS Error
// whose text explains the denial. A query that is not one standard
// question gets FORMERR (or NOTIMP); one whose header cannot be read
// gets no answer (nil). The Record is for the log; the caller fills in
// the time, VM id and attribution.
func AnswerDNS(q []byte, pol Policy, ips *FakeIPs, vmName, policyName string) ([]byte, Record) {
	rec := Record{Proto: "dns", VM: vmName, Policy: policyName, Decision: DecisionDeny, Port: 53}
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		rec.Note = "malformed query: no header"
		return nil, rec
	}
	if h.Response {
		rec.Note = "malformed query: a response"
		return nil, rec
	}
	reply := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if h.OpCode != 0 {
		rec.Note = "not a standard query"
		reply.RCode = dnsmessage.RCodeNotImplemented
		return buildDNS(reply, nil, nil, ""), rec
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		rec.Note = "malformed query: not one question"
		reply.RCode = dnsmessage.RCodeFormatError
		return buildDNS(reply, nil, nil, ""), rec
	}
	question := qs[0]
	rec.Note = question.Type.String()
	raw := question.Name.String()
	name := NormalizeName(raw)
	rec.Name = name
	if name == "" {
		rec.Note = "invalid name " + strconv.Quote(truncate(raw, 80))
		reply.RCode = dnsmessage.RCodeNameError
		return buildDNS(reply, &question, nil, "banger egress: the name looked up is not a valid host name"), rec
	}
	rule, ok := pol.nameRule(name)
	rec.Rule = rule
	if !ok {
		reply.RCode = dnsmessage.RCodeNameError
		return buildDNS(reply, &question, nil, DenyMessage(vmName, policyName, name, 0)), rec
	}
	rec.Decision = DecisionAllow
	var a *[4]byte
	if question.Type == dnsmessage.TypeA && question.Class == dnsmessage.ClassINET {
		addr := ips.Addr(name)
		b := addr.As4()
		a = &b
		rec.Addr = addr.String()
	}
	return buildDNS(reply, &question, a, ""), rec
}

// buildDNS packs an answer; a failure to pack (which valid inputs never
// cause) gives nil, which the caller treats as no answer.
func buildDNS(h dnsmessage.Header, q *dnsmessage.Question, a *[4]byte, ede string) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
	b.EnableCompression()
	if q != nil {
		if err := b.StartQuestions(); err != nil {
			return nil
		}
		if err := b.Question(*q); err != nil {
			return nil
		}
	}
	if a != nil {
		if err := b.StartAnswers(); err != nil {
			return nil
		}
		rh := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: DNSTTL}
		if err := b.AResource(rh, dnsmessage.AResource{A: *a}); err != nil {
			return nil
		}
	}
	if ede != "" {
		// The OPT record goes out even when the query had none (RFC 6891
		// says it should not): resolvers that do not know it skip the
		// additional section, and those that do show the explanation.
		if err := b.StartAdditionals(); err != nil {
			return nil
		}
		var rh dnsmessage.ResourceHeader
		if err := rh.SetEDNS0(1232, dnsmessage.RCodeSuccess, false); err != nil {
			return nil
		}
		data := binary.BigEndian.AppendUint16(nil, edeBlocked)
		data = append(data, ede...)
		if err := b.OPTResource(rh, dnsmessage.OPTResource{Options: []dnsmessage.Option{{Code: ednsOptionEDE, Data: data}}}); err != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
