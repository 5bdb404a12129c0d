package system

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestParseProcStatUsage(t *testing.T) {
	// statLine has utime 1, stime 2 and rss 200 pages.
	st, err := parseProcStat([]byte(statLine("qemu", "S", "5")))
	if err != nil {
		t.Fatal(err)
	}
	if !st.hasUsage || st.cpuTicks != 3 || st.rssPages != 200 {
		t.Fatalf("usage = %+v, want cpu 3 ticks, rss 200 pages", st)
	}
	// Long enough for the start time but not for rss: usage is absent,
	// the start time still parses (ProcAlive must not get stricter).
	short := "1 (a) S 1 1 1 0 -1 0 0 0 0 0 7 8 0 0 20 0 1 0 99"
	st, err = parseProcStat([]byte(short))
	if err != nil || st.hasUsage || st.startTime != 99 {
		t.Fatalf("short line: %+v %v", st, err)
	}
	bad := "1 (a) S 1 1 1 0 -1 0 0 0 0 0 x 8 0 0 20 0 1 0 99 123 200"
	if _, err := parseProcStat([]byte(bad)); !errors.Is(err, ErrBadProcStat) {
		t.Fatalf("bad utime: err = %v", err)
	}
}

func TestParseBootTime(t *testing.T) {
	tm, err := parseBootTime([]byte("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"))
	if err != nil || !tm.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("got %v %v", tm, err)
	}
	for _, in := range []string{"cpu 1\n", "btime x\n", "btime -5\n", ""} {
		if _, err := parseBootTime([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestReadProcUsageSelf reads the test process itself after burning some
// CPU: the numbers must be those of a live process.
func TestReadProcUsageSelf(t *testing.T) {
	deadline := time.Now().Add(300 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	u, err := ReadProcUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.CPUTicks == 0 || u.CPU() <= 0 {
		t.Errorf("CPU ticks = %d after a busy loop", u.CPUTicks)
	}
	if u.RSSBytes < 1<<20 {
		t.Errorf("RSS = %d bytes; a Go test binary uses more than 1 MiB", u.RSSBytes)
	}
	boot, err := BootTime()
	if err != nil {
		t.Fatal(err)
	}
	started := ProcStartedAt(boot, u.StartTicks)
	if d := time.Since(started); d < 0 || d > time.Hour {
		t.Errorf("this test process started %v ago, by /proc", d)
	}
	if _, err := ReadProcUsage(1 << 30); err == nil {
		t.Error("usage of a missing pid")
	}
}
