package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bangerdev/banger/api"
)

// maxMetaBytes bounds what readMeta accepts: meta.json is ours, but a
// corrupt or planted file must not make the agent allocate without bound.
const maxMetaBytes = 1 << 20

// writeMeta replaces dir/meta.json atomically (write a temporary file,
// then rename), so a reader never sees half a file.
func writeMeta(dir string, s api.Session) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write session metadata: %w", err)
	}
	f, err := os.CreateTemp(dir, tempFilePrefix+metaFile+"-*")
	if err != nil {
		return fmt.Errorf("write session metadata: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, metaFile))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write session metadata: %w", err)
	}
	return nil
}

// readMeta reads dir/meta.json.
func readMeta(dir string) (api.Session, error) {
	f, err := os.Open(filepath.Join(dir, metaFile))
	if err != nil {
		return api.Session{}, err
	}
	defer f.Close()
	return decodeMeta(io.LimitReader(f, maxMetaBytes))
}

// decodeMeta parses and sanity-checks metadata: its id becomes a path.
func decodeMeta(r io.Reader) (api.Session, error) {
	var s api.Session
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return api.Session{}, fmt.Errorf("decode session metadata: %w", err)
	}
	if err := ValidateRef(s.ID); err != nil {
		return api.Session{}, fmt.Errorf("decode session metadata: %w", err)
	}
	return s, nil
}

// ExitStatus follows shell conventions: 128+N for death by signal N.
func ExitStatus(ps *os.ProcessState, waitErr error) api.ExitStatus {
	if ps == nil {
		msg := "wait failed"
		if waitErr != nil {
			msg = "wait: " + waitErr.Error()
		}
		return api.ExitStatus{Code: 126, Error: msg}
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		sig := int(ws.Signal())
		return api.ExitStatus{Code: 128 + sig, Signal: sig}
	}
	return api.ExitStatus{Code: ps.ExitCode()}
}

// lockHeld reports whether a live supervisor holds dir's lock. The
// supervisor takes it exclusively for its whole life and the kernel drops
// it when the process dies, however it dies: unlike a pid, it cannot be
// fooled by pid reuse.
func lockHeld(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// takeLock creates and locks dir's supervisor lock; the returned file
// must stay open for as long as the lock is meant to be held.
func takeLock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("supervisor lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errors.New("supervisor lock: another supervisor runs this session")
		}
		return nil, fmt.Errorf("supervisor lock: %w", err)
	}
	return f, nil
}
