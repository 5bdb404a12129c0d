package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

func TestEgressPrinter(t *testing.T) {
	recs := []api.EgressRecord{
		{ID: 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Session: "s1", Process: "curl", PID: 42, Decision: "allow", Proto: "tcp",
			Name: "api.anthropic.com", Port: 443, Addr: "198.18.0.1", BytesUp: 2048, BytesDown: 3 << 20, DurationMS: 1500, Rule: "api.anthropic.com"},
		{ID: 2, Decision: "deny", Proto: "tcp", Addr: "192.0.2.1:443"},
	}
	var b bytes.Buffer
	p := newEgressPrinter(&b, false)
	for _, r := range recs {
		p.print(r)
	}
	_ = p.flush()
	out := b.String()
	for _, want := range []string{"TIME", "curl[42]", "api.anthropic.com:443", "2.0K", "3.0M", "1.5s", "(default deny)", "192.0.2.1:443"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	p = newEgressPrinter(&b, true)
	p.print(recs[1])
	if got := b.String(); !strings.HasPrefix(got, `{"id":2,`) || strings.Count(got, "\n") != 1 {
		t.Errorf("json line %q", got)
	}
	b.Reset()
	p = newEgressPrinter(&b, false)
	p.live = true
	p.print(recs[0])
	if lines := strings.Split(strings.TrimSpace(b.String()), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "TIME") {
		t.Errorf("live output %q", b.String())
	}
}
