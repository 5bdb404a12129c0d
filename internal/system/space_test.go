package system

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestCheckFree(t *testing.T) {
	fake := func(free uint64) Statfs { return func(string) (uint64, error) { return free, nil } }
	if err := CheckFree(fake(5<<30), "create VM", "/var/lib/banger", 4<<30); err != nil {
		t.Fatalf("enough space refused: %v", err)
	}
	err := CheckFree(fake(1288490189), "image build", "/var/lib/banger", 4831838208)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("err = %v, want ErrNoSpace", err)
	}
	want := "image build needs ~4.5 GiB in /var/lib/banger, 1.2 GiB free"
	if err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
	if err := CheckFree(func(string) (uint64, error) { return 0, errors.New("boom") }, "x", "/", 1); err != nil {
		t.Fatalf("statfs failure should not refuse: %v", err)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 4831838208: "4.5 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestLimitedWriter(t *testing.T) {
	var buf bytes.Buffer
	w := &LimitedWriter{W: &buf, Max: 10, What: "bundle"}
	if _, err := w.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("123456")); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "bundle") {
		t.Fatalf("err = %v", err)
	}
	if buf.Len() != 5 {
		t.Fatalf("wrote %d bytes past the limit", buf.Len()-5)
	}
}

func TestSpaceGuardStopsStream(t *testing.T) {
	free := uint64(1 << 30)
	statfs := func(string) (uint64, error) { return free, nil }
	// The stream goes nowhere: keeping its ~900 MiB in memory only cost
	// time.
	w := &LimitedWriter{W: io.Discard, Max: 1 << 40, What: "bundle", Guard: &SpaceGuard{Statfs: statfs, What: "workspace pull", Dir: "/state", MinFree: 100 << 20}}
	chunk := make([]byte, 1<<20)
	var err error
	for i := 0; i < 2000 && err == nil; i++ {
		_, err = w.Write(chunk)
		free -= 1 << 20 // the disk fills as the stream lands
	}
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "in /state") {
		t.Fatalf("err = %v, want a no-space error naming the dir", err)
	}
	if free < 100<<20 {
		t.Fatalf("stream ate into the reserve: %d MiB left", free>>20)
	}
}

func TestCappedWriter(t *testing.T) {
	var buf bytes.Buffer
	w := &CappedWriter{W: &buf, Max: 8, Note: "[cut]"}
	for range 5 {
		if n, err := w.Write([]byte("abc")); n != 3 || err != nil {
			t.Fatalf("write = %d, %v", n, err)
		}
	}
	if buf.String() != "abcabcab[cut]" {
		t.Fatalf("got %q", buf.String())
	}
}
