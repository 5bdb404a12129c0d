package cli

import (
	"strings"
	"testing"
)

func TestEventsAndTUIArgs(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"events"}, ExitError, "no banger daemon is answering"},
		{[]string{"events", "--vm", "dev", "--json"}, ExitError, "no banger daemon"},
		{[]string{"events", "extra"}, ExitUsage, "unknown command"},
		{[]string{"tui", "extra"}, ExitUsage, "unknown command"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: got %d %q, want %d %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}
