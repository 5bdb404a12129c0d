package agentclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/workspace"
)

// WorkspaceStreams produce what a prepare sends after its request, in
// this order: Bundle, PackIndex (bundle mode only), Overlay, Entries
// (bundle mode only). Each writes into the section it is given and
// returns; an error aborts the prepare.
type WorkspaceStreams struct {
	Bundle    func(io.Writer) error
	PackIndex func(io.Writer) error
	Overlay   func(io.Writer) error
	Entries   func(io.Writer) error
}

// PrepareWorkspace replaces the guest workspace described by req,
// streaming the sections from streams, and calls onStage as the guest
// reaches each stage. The error of a refused or failed prepare carries
// the guest's *api.Error (message, hint, code).
func (c *Client) PrepareWorkspace(ctx context.Context, req workspace.ApplyRequest, streams WorkspaceStreams, onStage func(string)) (workspace.ApplyResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return workspace.ApplyResult{}, fmt.Errorf("encode workspace request: %w", err)
	}
	conn, err := c.upgrade(ctx, agentapi.AgentWorkspacePath, body, "agent workspace")
	if err != nil {
		return workspace.ApplyResult{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	sendErr := make(chan error, 1)
	go func() {
		w := mux.NewWriter(conn)
		sec := &sectionWriter{w: workspace.SectionWriter(w)}
		type part struct {
			what string
			fn   func(io.Writer) error
		}
		parts := []part{{"working tree", streams.Overlay}}
		if req.Plan.Mode == workspace.ModeBundle {
			parts = []part{{"bundle", streams.Bundle}, {"pack index", streams.PackIndex},
				{"working tree", streams.Overlay}, {"index entries", streams.Entries}}
		}
		// tar and git write in small pieces; the buffer turns them into
		// frames of SectionFrame bytes.
		bw := bufio.NewWriterSize(sec, workspace.SectionFrame)
		err := func() error {
			for _, p := range parts {
				if err := p.fn(bw); err != nil {
					return fmt.Errorf("send %s: %w", p.what, err)
				}
				if err := bw.Flush(); err != nil {
					return err
				}
				if err := w.WriteStdinClose(); err != nil {
					return err
				}
			}
			return nil
		}()
		if err != nil && sec.err == nil {
			// A failure on this side, not of the stream: closing the
			// stream makes the guest abandon the half-built workspace.
			// The error goes out first: the close ends the read loop
			// below, which must then find it rather than the closed
			// connection's error.
			sendErr <- &localError{err}
			conn.Close()
			return
		}
		sendErr <- err
	}()

	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev workspace.ApplyEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return workspace.ApplyResult{}, fmt.Errorf("agent workspace: bad event %q: %w", sc.Text(), err)
		}
		switch {
		case ev.Error != "":
			return workspace.ApplyResult{}, &api.Error{Message: ev.Error, Hint: ev.Hint, Code: ev.Code}
		case ev.Done:
			if ev.Result == nil {
				return workspace.ApplyResult{}, errors.New("agent workspace: done without a result")
			}
			return *ev.Result, nil
		case ev.Stage != "" && onStage != nil:
			onStage(ev.Stage)
		}
	}
	// The guest hung up without a final event: a local failure (which
	// closed the stream) explains it best.
	select {
	case err := <-sendErr:
		var local *localError
		if errors.As(err, &local) {
			return workspace.ApplyResult{}, local.err
		}
	default:
	}
	if ctx.Err() != nil {
		return workspace.ApplyResult{}, fmt.Errorf("agent workspace: %w", ctx.Err())
	}
	if err := sc.Err(); err != nil {
		return workspace.ApplyResult{}, fmt.Errorf("agent workspace: %w", err)
	}
	return workspace.ApplyResult{}, errors.New("agent workspace: the guest closed the stream before finishing")
}

type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

// sectionWriter remembers a failed write to the stream, to tell a broken
// stream (which the guest's events explain) from a failure of the
// producer.
type sectionWriter struct {
	w   io.Writer
	err error
}

func (s *sectionWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// ExportWorkspace fetches the guest workspace's refs and a bundle of what
// have does not reach. The bundle is written to out (nothing when the
// host has every object).
func (c *Client) ExportWorkspace(ctx context.Context, req workspace.ExportRequest, out io.Writer) ([]workspace.Ref, int64, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, 0, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+agentapi.AgentWorkspaceBundlePath, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hreq)
	if err != nil {
		return nil, 0, fmt.Errorf("export workspace: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, statusError(resp)
	}
	var n [4]byte
	if _, err := io.ReadFull(resp.Body, n[:]); err != nil {
		return nil, 0, fmt.Errorf("export workspace: read header: %w", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > workspace.MaxExportHeader {
		return nil, 0, fmt.Errorf("export workspace: header of %d bytes is too large", size)
	}
	raw := make([]byte, size)
	if _, err := io.ReadFull(resp.Body, raw); err != nil {
		return nil, 0, fmt.Errorf("export workspace: read header: %w", err)
	}
	var hdr workspace.ExportHeader
	if err := json.Unmarshal(raw, &hdr); err != nil {
		return nil, 0, fmt.Errorf("export workspace: decode header: %w", err)
	}
	written, err := io.Copy(out, resp.Body)
	if err != nil {
		return nil, written, fmt.Errorf("export workspace: receive bundle: %w", err)
	}
	return hdr.Refs, written, nil
}
