package workspace

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Why banger writes the guest's index itself: after `git read-tree` every
// entry lacks stat data, so the first `git status` (or `update-index
// --refresh`) hashes every file of the working tree again — under TCG
// that is the slowest step of a prepare. The host already knows which
// files match their index entry (git diff-files), and the guest knows the
// stat data of the files it just wrote, so it writes an index whose clean
// entries carry real stat data and whose dirty entries carry none (git
// then looks at exactly those, as on the host).

// Index entry flags of the entries section.
const (
	flagAssumeUnchanged = 'a'
	flagSkipWorktree    = 's'
	flagIntentToAdd     = 'i'
	// flagDirty: the host's file may differ from the entry; the guest
	// leaves its stat data empty so git compares the content.
	flagDirty = 'd'
)

// indexEntry is one stage-0 index entry as the host sends it.
type indexEntry struct {
	path  string
	mode  uint32
	oid   []byte
	flags string
}

func (e indexEntry) has(f byte) bool { return strings.IndexByte(e.flags, f) >= 0 }

// fileStat is the stat data an index entry records.
type fileStat struct {
	ctimeSec, ctimeNsec, mtimeSec, mtimeNsec uint32
	dev, ino, uid, gid, size                 uint32
	mode                                     uint32 // S_IFMT bits of the file
}

func statOf(st *syscall.Stat_t) fileStat {
	return fileStat{
		ctimeSec: uint32(st.Ctim.Sec), ctimeNsec: uint32(st.Ctim.Nsec),
		mtimeSec: uint32(st.Mtim.Sec), mtimeNsec: uint32(st.Mtim.Nsec),
		dev: uint32(st.Dev), ino: uint32(st.Ino), uid: st.Uid, gid: st.Gid,
		size: uint32(st.Size), mode: st.Mode & syscall.S_IFMT,
	}
}

// writeEntries encodes entries as NUL-terminated records
// "<mode-octal> <oid-hex> <flags>\t<path>" (flags "-" when none).
func writeEntries(w io.Writer, entries []indexEntry) error {
	bw := bufio.NewWriter(w)
	for _, e := range entries {
		flags := e.flags
		if flags == "" {
			flags = "-"
		}
		fmt.Fprintf(bw, "%o %x %s\t%s\x00", e.mode, e.oid, flags, e.path)
	}
	return bw.Flush()
}

// maxEntries bounds what a guest accepts (git itself handles a few
// million).
const maxEntries = 10_000_000

// readEntries decodes the entries section. It is fuzzed: the records
// decide file names and index content in the guest.
func readEntries(r io.Reader, hashLen int) ([]indexEntry, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var out []indexEntry
	prev := ""
	for {
		rec, err := br.ReadString(0)
		if errors.Is(err, io.EOF) {
			if rec != "" {
				return nil, fmt.Errorf("index entries: unterminated record %q", rec)
			}
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("index entries: %w", err)
		}
		rec = rec[:len(rec)-1]
		meta, path, ok := strings.Cut(rec, "\t")
		f := strings.Split(meta, " ")
		if !ok || len(f) != 3 {
			return nil, fmt.Errorf("index entries: malformed record %q", rec)
		}
		mode, err := strconv.ParseUint(f[0], 8, 32)
		if err != nil {
			return nil, fmt.Errorf("index entries: bad mode in %q", rec)
		}
		switch mode {
		case 0o100644, 0o100755, 0o120000:
		default:
			return nil, fmt.Errorf("index entries: unsupported mode %o for %q", mode, path)
		}
		oid, err := hex.DecodeString(f[1])
		if err != nil || len(oid) != hashLen {
			return nil, fmt.Errorf("index entries: bad object id in %q", rec)
		}
		flags := f[2]
		if flags == "-" {
			flags = ""
		}
		for i := 0; i < len(flags); i++ {
			switch flags[i] {
			case flagAssumeUnchanged, flagSkipWorktree, flagIntentToAdd, flagDirty:
			default:
				return nil, fmt.Errorf("index entries: unknown flag %q in %q", flags[i], rec)
			}
		}
		clean, err := repoPath(path)
		if err != nil || clean != path {
			return nil, fmt.Errorf("index entries: unusable path %q", path)
		}
		// git requires strictly increasing names; it also keeps the
		// writer honest about duplicates.
		if len(out) > 0 && path <= prev {
			return nil, fmt.Errorf("index entries: %q is out of order", path)
		}
		if len(out) >= maxEntries {
			return nil, fmt.Errorf("index entries: more than %d", maxEntries)
		}
		prev = path
		out = append(out, indexEntry{path: path, mode: uint32(mode), oid: oid, flags: flags})
	}
}

// writeIndexFile writes gitDir/index (version 2, or 3 when an entry needs
// extended flags) for entries, taking stat data from stats for the clean
// entries whose file has the entry's type. It replaces the file
// atomically, as git does.
func writeIndexFile(gitDir, objectFormat string, entries []indexEntry, stats map[string]fileStat) error {
	var h hash.Hash
	switch objectFormat {
	case "sha1":
		h = sha1.New()
	case "sha256":
		h = sha256.New()
	default:
		return fmt.Errorf("write index: unknown object format %q", objectFormat)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	version := uint32(2)
	for _, e := range entries {
		if e.has(flagSkipWorktree) || e.has(flagIntentToAdd) {
			version = 3
		}
	}
	var buf bytes.Buffer
	buf.WriteString("DIRC")
	binary.Write(&buf, binary.BigEndian, version)
	binary.Write(&buf, binary.BigEndian, uint32(len(entries)))
	for _, e := range entries {
		var st fileStat
		if s, ok := stats[e.path]; ok && !e.has(flagDirty) && !e.has(flagIntentToAdd) && s.mode == e.mode&syscall.S_IFMT {
			st = s
		}
		start := buf.Len()
		for _, v := range []uint32{st.ctimeSec, st.ctimeNsec, st.mtimeSec, st.mtimeNsec, st.dev, st.ino, e.mode, st.uid, st.gid, st.size} {
			binary.Write(&buf, binary.BigEndian, v)
		}
		buf.Write(e.oid)
		flags := uint16(min(len(e.path), 0xfff))
		if e.has(flagAssumeUnchanged) {
			flags |= 0x8000
		}
		extended := e.has(flagSkipWorktree) || e.has(flagIntentToAdd)
		if extended {
			flags |= 0x4000
		}
		binary.Write(&buf, binary.BigEndian, flags)
		if extended {
			var ext uint16
			if e.has(flagSkipWorktree) {
				ext |= 0x4000
			}
			if e.has(flagIntentToAdd) {
				ext |= 0x2000
			}
			binary.Write(&buf, binary.BigEndian, ext)
		}
		buf.WriteString(e.path)
		// 1 to 8 NULs, so the entry is a multiple of 8 bytes long.
		n := buf.Len() - start
		buf.Write(make([]byte, 8-n%8))
	}
	h.Write(buf.Bytes())
	buf.Write(h.Sum(nil))

	tmp, err := os.CreateTemp(gitDir, "index.banger-*")
	if err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("write index: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(gitDir, "index")); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

// WriteEntries writes the entries section: every tracked entry of the
// host index with its flags. Call it after WriteOverlay: an entry is
// marked dirty unless git diff-files, run now, finds its file unchanged
// since the index recorded it, so a file edited while the overlay was
// being read is never claimed clean.
func (w *Workspace) WriteEntries(ctx context.Context, out io.Writer) error {
	if w.Plan.Mode != ModeBundle {
		return fmt.Errorf("write index entries: workspace is in %s mode", w.Plan.Mode)
	}
	g := w.Repo.git(w.r)
	changed, err := g.run(ctx, withArgs(hostConfig, "diff-files", "--name-only", "-z")...)
	if err != nil {
		return gitError(err, "compare the working tree of "+w.Repo.Root)
	}
	dirty := map[string]bool{}
	for rec := range bytes.SplitSeq(changed, []byte{0}) {
		dirty[string(rec)] = true
	}
	for _, p := range w.Plan.Deleted {
		dirty[p] = true
	}
	ita := map[string]bool{}
	for _, p := range w.Plan.IntentToAdd {
		ita[p] = true
	}
	var entries []indexEntry
	for _, e := range w.entries {
		if !e.tracked {
			continue
		}
		mode, err := strconv.ParseUint(e.mode, 8, 32)
		if err != nil {
			return fmt.Errorf("index entry %q: bad mode %q", e.path, e.mode)
		}
		oid, err := hex.DecodeString(e.oid)
		if err != nil {
			return fmt.Errorf("index entry %q: bad object id %q", e.path, e.oid)
		}
		var flags []byte
		if e.assumeUnchanged {
			flags = append(flags, flagAssumeUnchanged)
		}
		if e.skipWorktree {
			flags = append(flags, flagSkipWorktree)
		}
		if ita[e.path] {
			flags = append(flags, flagIntentToAdd)
		}
		if dirty[e.path] {
			flags = append(flags, flagDirty)
		}
		entries = append(entries, indexEntry{path: e.path, mode: uint32(mode), oid: oid, flags: string(flags)})
	}
	return writeEntries(out, entries)
}
