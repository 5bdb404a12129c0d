package system

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// notInPath is LookPathIn's answer when no entry of the PATH it was given
// holds the name: it matches ErrNotFound, and fs.ErrNotExist as a missing
// file does.
type notInPath struct{}

func (notInPath) Error() string { return ErrNotFound.Error() }
func (notInPath) Is(target error) bool {
	return target == ErrNotFound || target == fs.ErrNotExist
}

// LookPathIn resolves a command name the way a shell does, but against the
// command's own PATH and working directory rather than this process's
// (the guest agent runs commands for others): a name with a slash is
// checked relative to dir and comes back as given (exec.Cmd resolves it
// against its Dir, and a script's $0 stays what the caller typed);
// anything else is searched in pathEnv, where an empty entry means dir.
//
// A failure matches fs.ErrNotExist when nothing of that name exists
// (ErrNotFound when no PATH entry has it, syscall.ENOENT for a name with
// a slash): a shell exits 127. Otherwise a file exists but cannot run
// (syscall.EACCES: not executable, syscall.EISDIR: a directory): 126.
func LookPathIn(name, pathEnv, dir string) (string, error) {
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if strings.Contains(name, "/") {
		if err := checkExecutable(abs(name)); err != nil {
			return "", err
		}
		return name, nil
	}
	var denied error
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := abs(filepath.Join(d, name))
		err := checkExecutable(p)
		if err == nil {
			return p, nil
		}
		if denied == nil && !errors.Is(err, fs.ErrNotExist) {
			denied = err
		}
	}
	if denied != nil {
		return "", denied
	}
	return "", notInPath{}
}

// checkExecutable reports why p cannot be executed, if it cannot, as the
// bare errno (ENOENT, EACCES, EISDIR, ...).
func checkExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	if st.IsDir() {
		return syscall.EISDIR
	}
	if st.Mode()&0o111 == 0 {
		return syscall.EACCES
	}
	return nil
}
