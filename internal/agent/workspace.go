package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/httpjson"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/workspace"
)

// prepareDirPrefix names the directory a prepare builds in, next to the
// workspace, so the final swap is a rename on one filesystem.
const prepareDirPrefix = ".banger-prepare-"

// handleWorkspace replaces a guest workspace (banger vm workspace
// prepare). Everything that can be refused is checked before the
// upgrade, so it fails as a plain HTTP error; after it the host streams
// the bundle and overlay sections and the agent answers with
// workspace.ApplyEvent lines.
//
// Replacing is atomic: the new repository is built in a sibling
// directory and swapped in with one renameat2(RENAME_EXCHANGE), so a
// prepare that fails at any point leaves the previous checkout as it was.
func (s *Server) handleWorkspace(w http.ResponseWriter, r *http.Request) {
	if !upgradeRequested(r.Header) {
		httpjson.WriteStatusError(w, http.StatusBadRequest, "workspace prepare needs a protocol upgrade",
			"send `Connection: Upgrade` and `Upgrade: "+api.MuxProtocol+"`")
		return
	}
	var req workspace.ApplyRequest
	if err := httpjson.Decode(http.MaxBytesReader(w, r.Body, workspace.MaxRequestBytes), &req); err != nil {
		httpjson.WriteStatusError(w, http.StatusBadRequest, "bad workspace request: "+err.Error(), "")
		return
	}
	if err := checkWorkspaceDir(req.Dir); err != nil {
		httpjson.WriteStatusError(w, http.StatusBadRequest, err.Error(), "prepare into an absolute directory such as "+workspace.GuestDir)
		return
	}
	if err := req.Plan.Validate(); err != nil {
		httpjson.WriteStatusError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	if !s.workspaceMu.TryLock() {
		httpjson.WriteError(w, &api.Error{Code: api.CodeConflict,
			Message: "another workspace prepare is running in this VM", Hint: "wait for it to finish"})
		return
	}
	defer s.workspaceMu.Unlock()
	if !req.Force {
		if busy := processesIn(s.procDir, req.Dir); len(busy) > 0 {
			httpjson.WriteError(w, &api.Error{Code: api.CodeConflict,
				Message: fmt.Sprintf("processes are running inside %s: %s", req.Dir, strings.Join(busy, ", ")),
				Hint:    "stop them first, or pass --force to replace the workspace under them"})
			return
		}
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Warn("workspace: hijack failed", "err", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n"); err != nil {
		return
	}
	t0 := time.Now()
	ev, old := s.applyWorkspace(r.Context(), conn, brw.Reader, req)
	if ev.Error != "" {
		s.log.Warn("workspace prepare failed", "dir", req.Dir, "err", ev.Error)
	} else {
		s.log.Info("workspace prepared", "dir", req.Dir, "head", ev.Result.Head, "replaced", ev.Result.Replaced, "took", time.Since(t0).Round(time.Millisecond))
	}
	_ = workspace.EncodeEvent(conn, ev)
	if old != "" {
		// The replaced tree goes after the answer: deleting tens of
		// thousands of files is slow in a VM and nobody waits for it.
		// A crash midway leaves a prepare directory that removeStale
		// deletes next time.
		go func() { _ = os.RemoveAll(old) }()
	}
}

// applyWorkspace builds the new repository next to req.Dir and swaps it
// in. It returns the final event (Done or Error) and the directory now
// holding the replaced workspace, for the caller to delete.
func (s *Server) applyWorkspace(ctx context.Context, conn net.Conn, br *bufio.Reader, req workspace.ApplyRequest) (workspace.ApplyEvent, string) {
	fail := func(err error) (workspace.ApplyEvent, string) {
		ev := workspace.ApplyEvent{Error: err.Error(), Code: api.CodeInternal}
		var ae *api.Error
		if errors.As(err, &ae) {
			ev.Hint, ev.Code = ae.Hint, ae.Code
		}
		return ev, ""
	}
	parent := filepath.Dir(req.Dir)
	removeStale(parent)
	tmp, err := os.MkdirTemp(parent, prepareDirPrefix)
	if err != nil {
		return fail(fmt.Errorf("create build directory: %w", err))
	}
	keep := false
	defer func() {
		if !keep {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fail(err)
	}
	// The sections arrive in this order on one frame stream; ApplyPlan
	// reads each to its end before it starts on the next.
	ahead, stop := readAhead(br, 128, 256<<10)
	defer stop()
	frames := mux.NewReader(ahead)
	section := func() *workspace.SectionReader { return workspace.NewSectionReader(frames) }
	var streams workspace.Streams
	var overlay *workspace.SectionReader
	if req.Plan.Mode == workspace.ModeBundle {
		streams.Bundle, streams.PackIndex = section(), section()
		overlay = section()
		// A tar reader may stop before the end of its section; the rest
		// is drained before the entries section is read.
		streams.Overlay, streams.Entries = overlay, &afterDrain{prev: overlay, next: section()}
	} else {
		overlay = section()
		streams.Overlay = overlay
	}
	progress := func(stage string) { _ = workspace.EncodeEvent(conn, workspace.ApplyEvent{Stage: stage}) }
	if err := workspace.ApplyPlan(ctx, system.Exec{}, tmp, req.Plan, streams, progress); err != nil {
		return fail(err)
	}
	if req.Plan.Mode != workspace.ModeBundle {
		if err := overlay.Drain(); err != nil {
			return fail(fmt.Errorf("read the rest of the overlay: %w", err))
		}
	}
	head, err := system.Exec{}.RunIn(ctx, system.RunOpts{Dir: tmp}, "git", "rev-parse", "HEAD")
	if err != nil {
		return fail(fmt.Errorf("read the new HEAD: %w", err))
	}
	res := &workspace.ApplyResult{Head: strings.TrimSpace(string(head))}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, req.Dir, unix.RENAME_EXCHANGE)
	switch {
	case err == nil:
		// tmp now holds the old workspace.
		res.Replaced = true
		keep = true
		return workspace.ApplyEvent{Done: true, Result: res}, tmp
	case errors.Is(err, unix.ENOENT):
		if err := os.Rename(tmp, req.Dir); err != nil {
			return fail(fmt.Errorf("move the workspace into place: %w", err))
		}
		keep = true
	default:
		return fail(fmt.Errorf("swap in the new workspace: %w", err))
	}
	return workspace.ApplyEvent{Done: true, Result: res}, ""
}

// readAhead reads r in a goroutine into up to n chunks of size bytes, so
// the channel keeps receiving while the guest writes files: under TCG
// both take a vCPU, and without a buffer each waits for the other. stop
// ends the goroutine once the reader is no longer wanted.
func readAhead(r io.Reader, n, size int) (_ io.Reader, stop func()) {
	a := &aheadReader{ch: make(chan chunk, n), done: make(chan struct{})}
	go func() {
		for {
			buf := make([]byte, size)
			k, err := r.Read(buf)
			select {
			case a.ch <- chunk{buf[:k], err}:
			case <-a.done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var once sync.Once
	return a, func() { once.Do(func() { close(a.done) }) }
}

type chunk struct {
	data []byte
	err  error
}

type aheadReader struct {
	ch   chan chunk
	done chan struct{}
	cur  []byte
	err  error
}

func (a *aheadReader) Read(p []byte) (int, error) {
	for len(a.cur) == 0 {
		if a.err != nil {
			return 0, a.err
		}
		c := <-a.ch
		a.cur, a.err = c.data, c.err
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// afterDrain reads next once prev is read to its end.
type afterDrain struct {
	prev    *workspace.SectionReader
	next    io.Reader
	drained bool
}

func (a *afterDrain) Read(p []byte) (int, error) {
	if !a.drained {
		if err := a.prev.Drain(); err != nil {
			return 0, err
		}
		a.drained = true
	}
	return a.next.Read(p)
}

// removeStale deletes build directories a crashed prepare left behind.
// workspaceMu is held, so none of them is in use.
func removeStale(parent string) {
	matches, _ := filepath.Glob(filepath.Join(parent, prepareDirPrefix+"*"))
	for _, m := range matches {
		_ = os.RemoveAll(m)
	}
}

func checkWorkspaceDir(dir string) error {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || dir == "/" {
		return fmt.Errorf("workspace directory %q must be a clean absolute path below /", dir)
	}
	if st, err := os.Stat(filepath.Dir(dir)); err != nil || !st.IsDir() {
		return fmt.Errorf("parent of workspace directory %s does not exist", dir)
	}
	return nil
}

// processesIn lists "pid (comm)" of every process whose working directory
// is dir or below it, except the agent itself.
func processesIn(procDir, dir string) []string {
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cwd, err := os.Readlink(filepath.Join(procDir, e.Name(), "cwd"))
		if err != nil || (cwd != dir && !strings.HasPrefix(cwd, dir+"/")) {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(procDir, e.Name(), "comm"))
		out = append(out, fmt.Sprintf("%d (%s)", pid, strings.TrimSpace(string(comm))))
	}
	return out
}

// handleWorkspaceBundle exports the workspace's branches and tags: a
// length-prefixed workspace.ExportHeader, then a git bundle of what the
// host does not have yet.
func (s *Server) handleWorkspaceBundle(w http.ResponseWriter, r *http.Request) {
	var req workspace.ExportRequest
	if err := httpjson.Decode(http.MaxBytesReader(w, r.Body, workspace.MaxRequestBytes), &req); err != nil {
		httpjson.WriteStatusError(w, http.StatusBadRequest, "bad export request: "+err.Error(), "")
		return
	}
	if err := checkWorkspaceDir(req.Dir); err != nil {
		httpjson.WriteStatusError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	if _, err := os.Stat(filepath.Join(req.Dir, ".git")); err != nil {
		httpjson.WriteStatusError(w, http.StatusNotFound, "no workspace at "+req.Dir, "prepare one with `banger vm workspace prepare`")
		return
	}
	refs, err := workspace.ListRefs(r.Context(), system.Exec{}, req.Dir)
	if err != nil {
		httpjson.WriteStatusError(w, http.StatusInternalServerError, err.Error(), "")
		return
	}
	hdr, err := json.Marshal(workspace.ExportHeader{Refs: refs})
	if err != nil {
		httpjson.WriteStatusError(w, http.StatusInternalServerError, err.Error(), "")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(hdr)))
	if _, err := w.Write(append(n[:], hdr...)); err != nil {
		return
	}
	if err := workspace.WriteExportBundle(r.Context(), system.Exec{}, req.Dir, refs, req.Have, w); err != nil {
		// The status is sent: cutting the body short is how the host
		// learns (its bundle verify fails on a truncated bundle).
		s.log.Warn("workspace export failed", "dir", req.Dir, "err", err)
		panic(http.ErrAbortHandler)
	}
}
