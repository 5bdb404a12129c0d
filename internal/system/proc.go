package system

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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
	// Z is a zombie, X (and x on old kernels) is dead: both still have a
	// stat file but will never do anything again.
	if st.state == 'Z' || st.state == 'X' || st.state == 'x' {
		return false
	}
	return st.startTime == startTime
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
	return procStat{state: fields[stateIdx][0], startTime: start}, nil
}
