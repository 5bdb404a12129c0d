package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/agentapi"
)

// Caps of what attribution reads of a process: the guest's processes are
// not the agent's to trust, and a huge environ must not stall a
// connection.
const (
	maxCommBytes    = 64
	maxEnvironBytes = 256 << 10
	maxSessionID    = 128
	// maxProcNetBytes bounds one /proc/net/{tcp,udp}{,6} read.
	maxProcNetBytes = 8 << 20
)

// attribution is who made a connection, as far as the agent could tell.
type attribution struct {
	PID     int
	Process string
	Session string
	// miss says why there is no PID (for the debug log).
	miss string
}

// attribute finds the process that owns the guest socket with local
// address local and (when valid) remote address remote, in /proc/net/proto
// ("tcp" or "udp"), within budget. A socket's IPv4 addresses show in the
// "6" file as IPv4-mapped when the process used a dual-stack socket. It
// is best effort: the zero attribution means "unknown".
//
// first lists PIDs to look at before all others: the processes that made
// the last connections (an agent's Node process makes most of them, and
// a full /proc scan costs tens of milliseconds on a small guest).
func attribute(procDir, proto string, local, remote netip.AddrPort, budget time.Duration, first []int) attribution {
	deadline := time.Now().Add(budget)
	type try struct {
		file          string
		local, remote netip.AddrPort
	}
	var tries []try
	if local.Addr().Unmap().Is4() {
		l4 := netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		r4 := remote
		if remote.IsValid() {
			r4 = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
		}
		tries = append(tries, try{proto, l4, r4})
		l6 := netip.AddrPortFrom(netip.AddrFrom16(l4.Addr().As16()), l4.Port())
		r6 := r4
		if r4.IsValid() {
			r6 = netip.AddrPortFrom(netip.AddrFrom16(r4.Addr().As16()), r4.Port())
		}
		tries = append(tries, try{proto + "6", l6, r6})
	} else {
		tries = append(tries, try{proto + "6", local, remote})
	}
	var inode uint64
	for _, t := range tries {
		b, err := readCapped(filepath.Join(procDir, "net", t.file), maxProcNetBytes)
		if err != nil {
			continue
		}
		if n, ok := findSocketInode(b, t.local, t.remote); ok {
			inode = n
			break
		}
	}
	if inode == 0 {
		return attribution{miss: "socket not in /proc/net/" + proto + "{,6}"}
	}
	pid := findSocketPID(procDir, inode, deadline, first)
	if pid == 0 {
		return attribution{miss: fmt.Sprintf("no process holds socket %d (or the %s budget ran out)", inode, budget)}
	}
	a := attribution{PID: pid}
	pidDir := filepath.Join(procDir, strconv.Itoa(pid))
	if b, err := readCapped(filepath.Join(pidDir, "comm"), maxCommBytes); err == nil {
		a.Process = strings.TrimSpace(string(b))
	}
	if b, err := readCapped(filepath.Join(pidDir, "environ"), maxEnvironBytes); err == nil {
		a.Session = sessionFromEnviron(b)
	}
	return a
}

// findSocketInode scans the lines of a /proc/net/{tcp,udp}{,6} file for
// the socket whose local address is local and whose remote address is
// remote, and returns its inode. An invalid remote matches any remote,
// and then a socket bound to the unspecified address on local's port
// matches too (an unconnected UDP socket). Inode 0 (a socket in
// TIME_WAIT) never matches.
func findSocketInode(data []byte, local, remote netip.AddrPort) (uint64, bool) {
	var fallback uint64
	for line := range bytes.Lines(data) {
		f := strings.Fields(string(line))
		// sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ...
		if len(f) < 10 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		la, err := parseProcAddr(f[1])
		if err != nil {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil || inode == 0 {
			continue
		}
		if remote.IsValid() {
			ra, err := parseProcAddr(f[2])
			if err != nil || ra != remote || la != local {
				continue
			}
			return inode, true
		}
		if la == local {
			return inode, true
		}
		if la.Port() == local.Port() && la.Addr().IsUnspecified() && fallback == 0 {
			fallback = inode
		}
	}
	return fallback, fallback != 0
}

// parseProcAddr parses an address of /proc/net/tcp{,6}: the address as
// 32-bit words in host byte order, hex ("0100007F" is 127.0.0.1 on
// little-endian machines), then ':' and the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || len(p) != 4 || (len(a) != 8 && len(a) != 32) {
		return netip.AddrPort{}, errors.New("malformed socket address")
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.AddrPort{}, errors.New("malformed socket address")
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, errors.New("malformed socket port")
	}
	// Each 32-bit word was printed as a host-order integer: turn the
	// words back into memory (network) order.
	for i := 0; i < len(raw); i += 4 {
		w := binary.BigEndian.Uint32(raw[i:])
		binary.NativeEndian.PutUint32(raw[i:], w)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// findSocketPID returns a process that holds socket inode open, scanning
// /proc/PID/fd of the first PIDs, then newest process first, or 0 when
// none is found before deadline.
func findSocketPID(procDir string, inode uint64, deadline time.Time, first []int) int {
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	self := os.Getpid()
	if pid := scanPIDs(procDir, first, want, self, deadline); pid != 0 {
		return pid
	}
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return 0
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 && !slices.Contains(first, pid) {
			pids = append(pids, pid)
		}
	}
	// The connecting process is most likely a recent one.
	slices.Sort(pids)
	slices.Reverse(pids)
	return scanPIDs(procDir, pids, want, self, deadline)
}

func scanPIDs(procDir string, pids []int, want string, self int, deadline time.Time) int {
	for _, pid := range pids {
		if time.Now().After(deadline) {
			return 0
		}
		if pid == self {
			continue
		}
		fdDir := filepath.Join(procDir, strconv.Itoa(pid), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && l == want {
				return pid
			}
		}
	}
	return 0
}

// recentPIDs remembers the last few processes that made connections.
type recentPIDs struct {
	mu   sync.Mutex
	pids []int
}

const maxRecentPIDs = 8

func (r *recentPIDs) list() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pids)
}

// add moves pid to the front.
func (r *recentPIDs) add(pid int) {
	if pid == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pids = slices.DeleteFunc(r.pids, func(p int) bool { return p == pid })
	r.pids = slices.Insert(r.pids, 0, pid)
	if len(r.pids) > maxRecentPIDs {
		r.pids = r.pids[:maxRecentPIDs]
	}
}

// sessionFromEnviron returns the value of agentapi.SessionEnv in a
// NUL-separated environ, or "" when absent or implausible.
func sessionFromEnviron(environ []byte) string {
	prefix := []byte(agentapi.SessionEnv + "=")
	for kv := range bytes.SplitSeq(environ, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, prefix)
		if !ok {
			continue
		}
		if len(v) == 0 || len(v) > maxSessionID || bytes.ContainsFunc(v, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'))
		}) {
			return ""
		}
		return string(v)
	}
	return ""
}

// readCapped reads at most n bytes of a file.
func readCapped(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(bufio.NewReader(io.LimitReader(f, n)))
}
