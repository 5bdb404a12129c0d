package workspace

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/bangerdev/banger/internal/mux"
)

// Stages of a prepare, in order, as operations show them. Resolve and
// bundle run on the host; the agent reports the others as ApplyPlan
// reaches them.
const (
	StageResolve  = "resolve"
	StageBundle   = "bundle"
	StageTransfer = "transfer"
	StageClone    = "clone"
	StageOverlay  = "overlay"
	StageBranch   = "branch"
)

// GuestDir is where the workspace lives in the guest.
const GuestDir = "/root/repo"

// MaxRequestBytes bounds the JSON request of a prepare: the plan's path
// lists grow with the repository (16 MiB is ~200k long paths).
const MaxRequestBytes = 16 << 20

// ApplyRequest is the JSON body of the agent's prepare call. After it the
// connection is upgraded and carries the streams (see WriteSection) from
// the host and ApplyEvents from the guest.
type ApplyRequest struct {
	// Dir is the guest directory to replace, normally GuestDir.
	Dir string `json:"dir"`
	// Force replaces the workspace even while processes have their
	// working directory inside it.
	Force bool      `json:"force,omitempty"`
	Plan  GuestPlan `json:"plan"`
}

// ApplyEvent is one line of the agent's answer stream (JSON lines): a
// stage starting, then finally Done or Error.
type ApplyEvent struct {
	Stage  string       `json:"stage,omitempty"`
	Done   bool         `json:"done,omitempty"`
	Error  string       `json:"error,omitempty"`
	Hint   string       `json:"hint,omitempty"`
	Code   string       `json:"code,omitempty"`
	Result *ApplyResult `json:"result,omitempty"`
}

// ApplyResult is what the guest reports after a successful prepare.
type ApplyResult struct {
	// Replaced: an older workspace was swapped out.
	Replaced bool `json:"replaced"`
	// Head is what `git rev-parse HEAD` says in the guest afterwards.
	Head string `json:"head"`
}

// Sections: after the upgrade the host sends the bundle (bundle mode
// only) and then the overlay tar as sections of mux frames: data in Stdin
// frames, the end of a section as one StdinClose frame. Reusing the exec
// framing keeps one fuzzed frame parser on the guest.

// WriteSection copies r to w as one section.
func WriteSection(w *mux.Writer, r io.Reader) error {
	if _, err := io.Copy(w.Stream(mux.Stdin), r); err != nil {
		return err
	}
	return w.WriteStdinClose()
}

// SectionFrame is the frame size of section data: large, because every
// frame costs the guest (under TCG) a few system calls and copies.
const SectionFrame = 256 << 10

// SectionWriter returns a writer whose bytes go out as section data in
// frames of up to SectionFrame bytes; close the section with
// w.WriteStdinClose. Buffer small writes in front of it (bufio).
func SectionWriter(w *mux.Writer) io.Writer { return w.BulkStream(mux.Stdin, SectionFrame) }

// ErrSectionFrame is a frame that has no place in a section stream.
var ErrSectionFrame = errors.New("workspace stream: unexpected frame")

// SectionReader reads one section from r: io.EOF at its StdinClose.
type SectionReader struct {
	r    *mux.Reader
	buf  []byte
	done bool
}

// NewSectionReader reads the next section of r.
func NewSectionReader(r *mux.Reader) *SectionReader { return &SectionReader{r: r} }

func (s *SectionReader) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		if s.done {
			return 0, io.EOF
		}
		f, err := s.r.ReadFrame()
		if errors.Is(err, io.EOF) {
			return 0, io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, err
		}
		switch f.Type {
		case mux.Stdin:
			s.buf = f.Payload
		case mux.StdinClose:
			s.done = true
		default:
			return 0, fmt.Errorf("%w: %s", ErrSectionFrame, f.Type)
		}
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// Drain reads the rest of the section, so the next one can start even
// when the consumer stopped early (git bundle may not read its trailer).
func (s *SectionReader) Drain() error {
	_, err := io.Copy(io.Discard, s)
	return err
}

// EncodeEvent is one JSON line.
func EncodeEvent(w io.Writer, ev ApplyEvent) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ExportRequest asks the agent for the guest workspace's branches and
// tags (banger vm workspace pull).
type ExportRequest struct {
	Dir string `json:"dir"`
	// Have are commits the host already has (the tips it sent at
	// prepare): the bundle leaves out everything they reach.
	Have []string `json:"have,omitempty"`
}

// Ref is one ref and the object it points at.
type Ref struct {
	Name   string `json:"name"`
	Object string `json:"object"`
}

// ExportHeader starts the agent's export answer: a 4-byte big-endian
// length, this JSON, then the bundle bytes until the end of the body
// (none when the host already has every object).
type ExportHeader struct {
	Refs []Ref `json:"refs"`
}

// MaxExportHeader bounds the JSON header the host accepts.
const MaxExportHeader = 16 << 20
