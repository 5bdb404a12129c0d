package system

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procRoot is a variable so tests can point the readers at a fake tree.
var procRoot = "/proc"

// ProcStartTime returns the start time of pid in clock ticks since boot
// (field 22 of /proc/PID/stat). Together with the pid it names a process
// uniquely within one boot, which is what lets the daemon re-adopt a VMM
// without mistaking a recycled pid for it.
func ProcStartTime(pid int) (uint64, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return 0, err
	}
	return st.startTime, nil
}

// ProcAlive reports whether pid exists, is the same process that started
// at startTime, and is not a zombie.
func ProcAlive(pid int, startTime uint64) bool {
	st, err := readProcStat(pid)
	if err != nil {
		return false
	}
	if st.startTime != startTime {
		return false
	}
	// Z is a zombie, X (and x on old kernels) is dead: both still have a
	// stat file but will never do anything again. But a zombie leader is
	// not a dead process: when the main thread of a multi-threaded VMM
	// (QEMU) exits first, the leader shows Z while the other threads are
	// still tearing down, and they still hold its files, disk locks
	// included. Only when no thread is left running is it gone.
	if deadState(st.state) {
		return anyThreadRunning(pid)
	}
	return true
}

func deadState(s byte) bool { return s == 'Z' || s == 'X' || s == 'x' }

// anyThreadRunning reports whether some thread of pid other than a
// zombie or dead one is still listed in /proc/PID/task.
func anyThreadRunning(pid int) bool {
	dir := procRoot + "/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, err := parseProcStat(b); err == nil && !deadState(st.state) {
			return true
		}
	}
	return false
}

// BootID returns the kernel's random boot id. A stored pid is only
// meaningful if the boot id it was recorded under is still current.
func BootID() (string, error) {
	b, err := os.ReadFile(procRoot + "/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", errors.New("read boot id: empty")
	}
	return id, nil
}

type procStat struct {
	state     byte
	startTime uint64
	// cpuTicks is user+system time (fields 14 and 15); rssPages is field
	// 24. Both are zero when the line is too short to have them.
	cpuTicks uint64
	rssPages int64
	hasUsage bool
}

func readProcStat(pid int) (procStat, error) {
	if pid <= 0 {
		return procStat{}, fmt.Errorf("read proc stat: invalid pid %d", pid)
	}
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, fmt.Errorf("read proc stat: %w", err)
	}
	st, err := parseProcStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("read proc stat of pid %d: %w", pid, err)
	}
	return st, nil
}

// parseProcStat parses one /proc/PID/stat line. The command name (field
// 2) is in parentheses but may itself contain spaces and parentheses, so
// the fixed fields start after the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 || bytes.IndexByte(b[:end], '(') < 0 {
		return procStat{}, fmt.Errorf("%w: no command name", ErrBadProcStat)
	}
	// Fields after the command name start at field 3 (state).
	fields := strings.Fields(string(b[end+1:]))
	const (
		stateIdx     = 3 - 3
		startTimeIdx = 22 - 3
	)
	if len(fields) <= startTimeIdx {
		return procStat{}, fmt.Errorf("%w: %d fields after command name, want at least %d", ErrBadProcStat, len(fields), startTimeIdx+1)
	}
	if len(fields[stateIdx]) != 1 {
		return procStat{}, fmt.Errorf("%w: state %q", ErrBadProcStat, fields[stateIdx])
	}
	start, err := strconv.ParseUint(fields[startTimeIdx], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("%w: start time: %w", ErrBadProcStat, err)
	}
	st := procStat{state: fields[stateIdx][0], startTime: start}
	const (
		utimeIdx = 14 - 3
		stimeIdx = 15 - 3
		rssIdx   = 24 - 3
	)
	if len(fields) > rssIdx {
		ut, uerr := strconv.ParseUint(fields[utimeIdx], 10, 64)
		stm, serr := strconv.ParseUint(fields[stimeIdx], 10, 64)
		rss, rerr := strconv.ParseInt(fields[rssIdx], 10, 64)
		if err := errors.Join(uerr, serr, rerr); err != nil {
			return procStat{}, fmt.Errorf("%w: usage fields: %w", ErrBadProcStat, err)
		}
		st.cpuTicks, st.rssPages, st.hasUsage = ut+stm, rss, true
	}
	return st, nil
}

// ClockTicks is USER_HZ, the unit of /proc/PID/stat times. It is 100 on
// every Linux architecture banger runs on; reading sysconf(_SC_CLK_TCK)
// would need cgo for no gain.
const ClockTicks = 100

// ProcUsage is one sample of a process's resource use.
type ProcUsage struct {
	// CPUTicks is user+system CPU time in ClockTicks since the process
	// started; StartTicks is its start time in ClockTicks since boot.
	CPUTicks   uint64
	StartTicks uint64
	RSSBytes   int64
}

// CPU returns the CPU time in CPUTicks as a duration.
func (u ProcUsage) CPU() time.Duration {
	return time.Duration(u.CPUTicks) * time.Second / ClockTicks
}

// ReadProcUsage samples pid's CPU time and resident memory from
// /proc/PID/stat. A zombie has no usage worth showing: it is an error.
func ReadProcUsage(pid int) (ProcUsage, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return ProcUsage{}, err
	}
	if !st.hasUsage {
		return ProcUsage{}, fmt.Errorf("read usage of pid %d: %w: line too short", pid, ErrBadProcStat)
	}
	if st.state == 'Z' || st.state == 'X' || st.state == 'x' {
		return ProcUsage{}, fmt.Errorf("read usage of pid %d: process is dead", pid)
	}
	return ProcUsage{CPUTicks: st.cpuTicks, StartTicks: st.startTime, RSSBytes: st.rssPages * int64(os.Getpagesize())}, nil
}

// BootTime returns when the host booted (the btime line of /proc/stat),
// which turns a process start time in ticks into a wall-clock time.
func BootTime() (time.Time, error) {
	b, err := os.ReadFile(procRoot + "/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("read boot time: %w", err)
	}
	return parseBootTime(b)
}

func parseBootTime(b []byte) (time.Time, error) {
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "btime ")
		if !ok {
			continue
		}
		sec, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		if err != nil || sec <= 0 {
			return time.Time{}, fmt.Errorf("read boot time: bad btime %q", strings.TrimSpace(rest))
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Time{}, errors.New("read boot time: no btime line in /proc/stat")
}

// ProcStartedAt converts a start time in ticks since boot to wall time.
func ProcStartedAt(boot time.Time, startTicks uint64) time.Time {
	return boot.Add(time.Duration(startTicks) * time.Second / ClockTicks)
}
