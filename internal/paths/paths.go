// Package paths decides where one banger instance keeps its state,
// sockets and config. Everything is derived from the environment by pure
// functions so the rules are unit-tested without touching the machine.
package paths

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrSocketPathTooLong reports a Unix socket path the kernel cannot bind.
var ErrSocketPathTooLong = errors.New("unix socket path too long")

// ErrBadID reports a VM or image id that is not a single path element.
var ErrBadID = errors.New("invalid id")

// Environment variables banger reads.
const (
	EnvHome   = "BANGER_HOME"
	EnvSocket = "BANGER_SOCKET"
)

// File and directory names inside an instance's directories.
const (
	FileConfig = "config.toml"
	FileSocket = "banger.sock"
	FileDB     = "state.db"

	DirRun    = "run"
	DirImages = "images"
	DirVMs    = "vms"
	DirLogs   = "logs"
	DirSSH    = "ssh"
	DirCache  = "cache"
)

// File names inside a VM's directory (Layout.VMDir).
const (
	FileQMPSocket   = "qmp.sock"
	FileAgentSocket = "agent.sock"
	FileConsoleLog  = "console.log"
	// FileConsoleSocket is QEMU's serial console; the daemon reads it
	// into FileConsoleLog (daemon/console.go).
	FileConsoleSocket = "console.sock"
	FileQEMULog       = "qemu.log"
	FilePID           = "qemu.pid"
	FileRootDisk      = "root.qcow2"
	FileWorkDisk      = "work.ext4"
	FileSeedDisk      = "seed.ext4"
	FileKnownHosts    = "known_hosts"

	// Firecracker: its API socket, the hybrid vsock socket, its own log
	// (logger), its stderr before the logger is set, metrics, and the raw
	// root disk (Firecracker takes no qcow2).
	FileFCSocket    = "fc.sock"
	FileVsockSocket = "vsock.sock"
	FileFCLog       = "firecracker.log"
	FileFCStderr    = "firecracker.stderr"
	FileFCMetrics   = "firecracker.metrics"
	FileRootRaw     = "root.ext4"
)

// System-wide locations used when the daemon runs as root.
const (
	rootDataDir    = "/var/lib/banger"
	rootRunDir     = "/run/banger"
	rootConfigFile = "/etc/banger/config.toml"
)

// maxSocketPath is sizeof(sun_path) minus the terminating NUL.
const maxSocketPath = 107

// Layout is where one banger instance keeps things.
type Layout struct {
	Home       string // the instance's root: BANGER_HOME, or DataDir
	DataDir    string
	RunDir     string
	ConfigFile string
	Socket     string
	DBPath     string
	ImagesDir  string
	VMsDir     string
	LogDir     string
	SSHDir     string
	CacheDir   string
}

// Resolve computes the layout for a process with the given environment
// lookup (os.Getenv in production) and uid.
//
// BANGER_HOME puts everything under one directory, which is how tests
// and side-by-side instances get private state. Otherwise root uses the
// FHS locations and other users the XDG ones.
func Resolve(env func(string) string, uid int) Layout {
	if home := cleanAbs(env(EnvHome)); home != "" {
		l := layoutUnder(home)
		l.RunDir = filepath.Join(home, DirRun)
		// The socket sits directly in BANGER_HOME, not under run/, to
		// keep it short: sun_path is only 108 bytes.
		l.Socket = filepath.Join(home, FileSocket)
		l.ConfigFile = filepath.Join(home, FileConfig)
		return l
	}
	if uid == 0 {
		l := layoutUnder(rootDataDir)
		l.RunDir = rootRunDir
		l.Socket = filepath.Join(rootRunDir, FileSocket)
		l.ConfigFile = rootConfigFile
		return l
	}

	fallback := fallbackDir(uid)
	userHome := cleanAbs(env("HOME"))
	dataHome := cleanAbs(env("XDG_DATA_HOME"))
	if dataHome == "" {
		dataHome = filepath.Join(userHome, ".local", "share")
		if userHome == "" {
			dataHome = filepath.Join(fallback, "data")
		}
	}
	configHome := cleanAbs(env("XDG_CONFIG_HOME"))
	if configHome == "" {
		configHome = filepath.Join(userHome, ".config")
		if userHome == "" {
			configHome = filepath.Join(fallback, "config")
		}
	}
	runDir := fallback
	if rt := cleanAbs(env("XDG_RUNTIME_DIR")); rt != "" {
		runDir = filepath.Join(rt, "banger")
	}

	l := layoutUnder(filepath.Join(dataHome, "banger"))
	l.RunDir = runDir
	l.Socket = filepath.Join(runDir, FileSocket)
	l.ConfigFile = filepath.Join(configHome, "banger", FileConfig)
	return l
}

// layoutUnder fills in everything that lives in the data directory.
func layoutUnder(data string) Layout {
	return Layout{
		Home:      data,
		DataDir:   data,
		DBPath:    filepath.Join(data, FileDB),
		ImagesDir: filepath.Join(data, DirImages),
		VMsDir:    filepath.Join(data, DirVMs),
		LogDir:    filepath.Join(data, DirLogs),
		SSHDir:    filepath.Join(data, DirSSH),
		// The cache sits next to the images rather than in
		// XDG_CACHE_HOME so build artefacts can be reflinked into them.
		CacheDir: filepath.Join(data, DirCache),
	}
}

// fallbackDir is used when XDG_RUNTIME_DIR (or HOME) is missing, as under
// some sudo and cron setups. The uid keeps users apart.
func fallbackDir(uid int) string {
	return "/tmp/banger-" + strconv.Itoa(uid)
}

// cleanAbs returns p cleaned if it is absolute, else "". The XDG spec
// says relative values must be ignored, and a relative BANGER_HOME would
// make the daemon's paths depend on its working directory.
func cleanAbs(p string) string {
	if !filepath.IsAbs(p) {
		return ""
	}
	return filepath.Clean(p)
}

// SocketPath is where a client looks for the daemon: the --socket flag,
// then BANGER_SOCKET, then the socket of the layout Resolve would pick
// ($BANGER_HOME/banger.sock, /run/banger/banger.sock for root,
// $XDG_RUNTIME_DIR/banger/banger.sock otherwise).
func SocketPath(flag string, env func(string) string, uid int) string {
	if flag != "" {
		return flag
	}
	if s := env(EnvSocket); s != "" {
		return s
	}
	return Resolve(env, uid).Socket
}

// VMDir is the directory holding one VM's disks, sockets and logs. id
// must satisfy CheckID.
func (l Layout) VMDir(id string) string { return filepath.Join(l.VMsDir, id) }

// ImageDir is the directory holding one image. id must satisfy CheckID.
func (l Layout) ImageDir(id string) string { return filepath.Join(l.ImagesDir, id) }

// InstancePrefix is a short tag that names every host resource this
// instance creates (TAP devices, process names, nftables objects), so
// that cleanup in one instance never touches another's. It is stable for
// a given data directory. At 8 bytes it leaves room for a per-VM suffix
// within a 15-byte interface name.
func (l Layout) InstancePrefix() string {
	sum := sha256.Sum256([]byte(l.DataDir))
	return "bg" + hex.EncodeToString(sum[:])[:6]
}

// CheckID rejects ids that would escape VMsDir or ImagesDir when joined.
func CheckID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\\\x00") {
		return fmt.Errorf("%w: %q", ErrBadID, id)
	}
	return nil
}

// CheckSocketPath fails early, with advice, for a socket path the kernel
// would refuse (sun_path holds 108 bytes including the NUL).
func CheckSocketPath(p string) error {
	if len(p) > maxSocketPath {
		return fmt.Errorf("%w: %q is %d bytes, the limit is %d; set a shorter %s (e.g. under /tmp)",
			ErrSocketPathTooLong, p, len(p), maxSocketPath, EnvHome)
	}
	return nil
}

// EnsureDirs creates the layout's directories with mode 0700. Existing
// directories keep their mode. The config file's directory is not
// created: the daemon only reads config.
//
// The runtime directory (and the socket's, when it is elsewhere) must be
// this user's own: under /tmp another user could create it first and put
// a socket of their own in it, so one that is a link, someone else's, or
// open to others is refused rather than used.
func EnsureDirs(l Layout) error {
	uid := os.Geteuid()
	for _, d := range []string{l.DataDir, filepath.Dir(l.DBPath), l.ImagesDir, l.VMsDir, l.LogDir, l.SSHDir, l.CacheDir} {
		if d == "" || d == "." {
			continue
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create state dir: %w", err)
		}
	}
	if l.RunDir != "" {
		if err := EnsurePrivateDir(l.RunDir, uid, true); err != nil {
			return err
		}
	}
	if sd := filepath.Dir(l.Socket); l.Socket != "" && sd != l.RunDir {
		if err := EnsurePrivateDir(sd, uid, false); err != nil {
			return err
		}
	}
	return nil
}

// ErrUnsafeDir reports a directory banger will not keep its socket in.
var ErrUnsafeDir = errors.New("unsafe directory")

// EnsurePrivateDir creates dir (mode 0700) when missing and checks that it
// is a real directory owned by uid. strict also refuses any access for
// group or others (a directory banger made itself, such as
// /tmp/banger-UID); otherwise only their write access is refused (a
// BANGER_HOME the user made).
func EnsurePrivateDir(dir string, uid int, strict bool) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	// Mkdir, unlike MkdirAll, never follows a link at the last element:
	// an existing link is EEXIST and the Lstat below refuses it.
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return checkPrivateDir(dir, uid, strict)
}

func checkPrivateDir(dir string, uid int, strict bool) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	var what string
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		what = "is a symbolic link"
	case !fi.IsDir():
		what = "is not a directory"
	case st == nil:
		what = "has no owner information"
	case int(st.Uid) != uid:
		what = fmt.Sprintf("is owned by uid %d", st.Uid)
	case strict && fi.Mode().Perm()&0o077 != 0:
		what = fmt.Sprintf("has mode %04o", fi.Mode().Perm())
	case !strict && fi.Mode().Perm()&0o022 != 0:
		what = fmt.Sprintf("is writable by others (mode %04o)", fi.Mode().Perm())
	default:
		return nil
	}
	return fmt.Errorf("%w: %s %s; banger keeps its socket there and needs a directory of uid %d with mode 0700: remove it (or set XDG_RUNTIME_DIR or %s elsewhere) and try again",
		ErrUnsafeDir, dir, what, uid, EnvHome)
}
