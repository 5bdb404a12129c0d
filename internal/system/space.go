package system

import (
	"errors"
	"fmt"
	"io"
)

// ErrNoSpace reports that a filesystem has too little free space for an
// operation; the *SpaceError carrying it has the figures.
var ErrNoSpace = errors.New("not enough free disk space")

// Statfs returns the bytes an unprivileged writer may still use on the
// filesystem holding dir. The daemon keeps it in a field so unit tests
// inject their own; FreeBytes is the real one.
type Statfs func(dir string) (free uint64, err error)

// SpaceError says how much an operation needs where, and what is free.
type SpaceError struct {
	What string // "create VM", "workspace pull"
	Dir  string
	Need uint64
	Free uint64
}

func (e *SpaceError) Error() string {
	return fmt.Sprintf("%s needs ~%s in %s, %s free", e.What, HumanBytes(e.Need), e.Dir, HumanBytes(e.Free))
}

func (e *SpaceError) Unwrap() error { return ErrNoSpace }

// CheckFree refuses with a *SpaceError when dir's filesystem has less
// than need bytes free. A filesystem that cannot be asked is not a reason
// to refuse: the write itself will then report ENOSPC.
func CheckFree(statfs Statfs, what, dir string, need uint64) error {
	if statfs == nil {
		statfs = FreeBytes
	}
	free, err := statfs(dir)
	if err != nil {
		return nil
	}
	if free < need {
		return &SpaceError{What: what, Dir: dir, Need: need, Free: free}
	}
	return nil
}

// HumanBytes renders n with a binary unit and one decimal ("4.5 GiB").
func HumanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// spaceCheckEvery is how many bytes a SpaceGuard lets through between two
// statfs calls: cheap enough, and the margin absorbs the bytes in between.
const spaceCheckEvery = 32 << 20

// SpaceGuard stops a stream of unknown length (a bundle or tar from a
// guest) before it eats the last MinFree bytes of Dir's filesystem.
type SpaceGuard struct {
	Statfs  Statfs
	What    string
	Dir     string
	MinFree uint64
	since   int64
	checked bool
}

// Add accounts n more bytes and checks the filesystem at the start and
// then every spaceCheckEvery bytes.
func (g *SpaceGuard) Add(n int) error {
	if g == nil {
		return nil
	}
	g.since += int64(n)
	if g.checked && g.since < spaceCheckEvery {
		return nil
	}
	g.checked, g.since = true, 0
	return CheckFree(g.Statfs, g.What, g.Dir, g.MinFree+spaceCheckEvery)
}

// GuardedReader reads from R while Guard allows it.
type GuardedReader struct {
	R     io.Reader
	Guard *SpaceGuard
}

func (r *GuardedReader) Read(p []byte) (int, error) {
	if err := r.Guard.Add(0); err != nil {
		return 0, err
	}
	n, err := r.R.Read(p)
	if gerr := r.Guard.Add(n); gerr != nil && err == nil {
		err = gerr
	}
	return n, err
}
