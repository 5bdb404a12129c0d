package daemon

import (
	"strings"
	"testing"
)

// What a restored guest's agent says it did is shown on the user's
// terminal: a hostile guest must not reach the terminal with control
// sequences or flood the operation's output.
func TestGuestSummary(t *testing.T) {
	got := guestSummary([]string{"hostname a", "clock\x1b]52;c;cGF5bG9hZA==\x07 set\nfake ✓ line", strings.Repeat("x", 10000)})
	if strings.ContainsAny(got, "\x1b\x07\n\r") {
		t.Fatalf("control characters kept: %q", got)
	}
	if !strings.HasPrefix(got, "hostname a; clock") || !strings.Contains(got, "fake ✓ line") {
		t.Fatalf("summary %q", got)
	}
	if len(got) > maxGuestSummary+8 {
		t.Fatalf("summary of %d bytes", len(got))
	}
}
