package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootRetryAccounting checks the harness's retry bookkeeping without a
// VM: daemon log lines saying "boot retried" are charged to the test that
// tracks the instance, half-written lines wait for the next look, and the
// summary names the test.
func TestBootRetryAccounting(t *testing.T) {
	home := t.TempDir()
	log := filepath.Join(home, "daemon.log")
	write := func(s string) {
		f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	// A private tally: the suite's summary counts real boots only.
	tally := &bootTally{by: map[string]*retryCount{}}
	in := &instance{t: t, home: home, expectRetries: true, tally: tally}
	write("time=x level=INFO msg=\"stage finished\"\n")
	in.trackRetries(t)
	write("time=x level=WARN msg=\"boot retried\" vm=a\ntime=x level=WARN msg=\"boot ret")
	in.collectRetries()
	got := tally.by[topTest(t)]
	if got == nil || got.expected != 1 {
		t.Fatalf("after one whole retry line: %+v", got)
	}
	write("ried\" vm=b\n")
	in.collectRetries()
	if got.expected != 2 {
		t.Fatalf("the completed line was not counted: %+v", got)
	}
	if s := tally.summary(); !strings.Contains(s, "TestBootRetryAccounting: 0 harness retry(ies), 0 daemon boot retry(ies), 2 expected") {
		t.Fatalf("summary: %q", s)
	}
}
