package workspace

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Why the host ships the pack index: `git fetch` of a bundle runs
// index-pack, which inflates and hashes every object again. Under TCG
// that took 40 s of guest CPU for a 300 MB tree; the host does it in about
// a second. The guest stores the bundle's pack as it arrives and the
// host's .idx next to it, as `git clone --local` would copy them.

// bundleHeader is the part of a git bundle before its pack: the refs it
// carries and the commits it needs (none for a full bundle).
type bundleHeader struct {
	refs          []Ref
	prerequisites []string
	objectFormat  string
}

const (
	maxBundleLine   = 64 << 10
	maxBundleHeader = 64 << 20
)

// readBundleHeader reads a v2 or v3 bundle header from br, leaving br at
// the first byte of the pack. It is fuzzed.
func readBundleHeader(br *bufio.Reader) (bundleHeader, error) {
	h := bundleHeader{objectFormat: "sha1"}
	total := 0
	line := func() (string, error) {
		var b []byte
		for {
			chunk, err := br.ReadSlice('\n')
			b = append(b, chunk...)
			total += len(chunk)
			if len(b) > maxBundleLine || total > maxBundleHeader {
				return "", errors.New("bundle header too long")
			}
			if err == nil {
				return strings.TrimSuffix(string(b), "\n"), nil
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				if errors.Is(err, io.EOF) {
					return "", io.ErrUnexpectedEOF
				}
				return "", err
			}
		}
	}
	sig, err := line()
	if err != nil {
		return h, fmt.Errorf("read bundle: %w", err)
	}
	v3 := false
	switch sig {
	case "# v2 git bundle":
	case "# v3 git bundle":
		v3 = true
	default:
		return h, fmt.Errorf("read bundle: not a git bundle (starts with %.40q)", sig)
	}
	for {
		l, err := line()
		if err != nil {
			return h, fmt.Errorf("read bundle: %w", err)
		}
		switch {
		case l == "":
			return h, nil
		case v3 && strings.HasPrefix(l, "@"):
			key, val, _ := strings.Cut(l[1:], "=")
			switch key {
			case "object-format":
				if val != "sha1" && val != "sha256" {
					return h, fmt.Errorf("read bundle: unknown object format %q", val)
				}
				h.objectFormat = val
			case "filter":
				return h, errors.New("read bundle: filtered (partial) bundles are not supported")
			default:
				return h, fmt.Errorf("read bundle: unknown capability %q", key)
			}
		case strings.HasPrefix(l, "-"):
			oid, _, _ := strings.Cut(l[1:], " ")
			if !isHex(oid) {
				return h, fmt.Errorf("read bundle: bad prerequisite %q", l)
			}
			h.prerequisites = append(h.prerequisites, oid)
		default:
			oid, name, ok := strings.Cut(l, " ")
			if !ok || !isHex(oid) || (name != "HEAD" && !strings.HasPrefix(name, "refs/")) || strings.ContainsAny(name, " \x00") {
				return h, fmt.Errorf("read bundle: bad ref line %q", l)
			}
			h.refs = append(h.refs, Ref{Name: name, Object: oid})
		}
	}
}

func hashLen(objectFormat string) int {
	if objectFormat == "sha256" {
		return 32
	}
	return 20
}

// installPack stores the pack that follows the bundle header (in br) and
// its index (idx) in gitDir/objects/pack. The pair must belong together:
// the index names the pack's checksum, which ends the pack.
func installPack(br io.Reader, idx io.Reader, gitDir, objectFormat string) error {
	packDir := filepath.Join(gitDir, "objects", "pack")
	if err := os.MkdirAll(packDir, 0o755); err != nil {
		return fmt.Errorf("install pack: %w", err)
	}
	tmpPack, err := os.CreateTemp(packDir, "tmp_pack_")
	if err != nil {
		return fmt.Errorf("install pack: %w", err)
	}
	defer os.Remove(tmpPack.Name())
	n, err := io.CopyBuffer(tmpPack, br, make([]byte, 256<<10))
	if err == nil {
		err = tmpPack.Close()
	} else {
		tmpPack.Close()
	}
	if err != nil {
		return fmt.Errorf("receive pack: %w", err)
	}
	hl := int64(hashLen(objectFormat))
	if n < 12+hl {
		return fmt.Errorf("receive pack: only %d bytes", n)
	}
	f, err := os.Open(tmpPack.Name())
	if err != nil {
		return fmt.Errorf("install pack: %w", err)
	}
	head := make([]byte, 4)
	sum := make([]byte, hl)
	_, err1 := f.ReadAt(head, 0)
	_, err2 := f.ReadAt(sum, n-hl)
	f.Close()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("install pack: %w", err)
	}
	if string(head) != "PACK" {
		return errors.New("receive pack: the bundle does not hold a pack")
	}
	idxData, err := io.ReadAll(io.LimitReader(idx, 4<<30))
	if err != nil {
		return fmt.Errorf("receive pack index: %w", err)
	}
	if len(idxData) < 8+2*int(hl) || !bytes.Equal(idxData[:8], []byte("\377tOc\x00\x00\x00\x02")) {
		return errors.New("receive pack index: not a version 2 pack index")
	}
	if !bytes.Equal(idxData[len(idxData)-2*int(hl):len(idxData)-int(hl)], sum) {
		return errors.New("receive pack index: it belongs to another pack")
	}
	name := "pack-" + hex.EncodeToString(sum)
	if err := os.Rename(tmpPack.Name(), filepath.Join(packDir, name+".pack")); err != nil {
		return fmt.Errorf("install pack: %w", err)
	}
	// The .idx last: git only looks at packs that have one.
	if err := os.WriteFile(filepath.Join(packDir, name+".idx"), idxData, 0o444); err != nil {
		return fmt.Errorf("install pack index: %w", err)
	}
	return nil
}

// WritePackIndex writes the .idx of the pack inside bundle (as made by
// WriteBundle), computed on the host with git index-pack, for the guest
// to install next to the pack.
func (w *Workspace) WritePackIndex(ctx context.Context, bundle io.Reader, out io.Writer) error {
	if w.scratch == "" {
		return errors.New("write pack index: workspace is closed or in full_copy mode")
	}
	br := bufio.NewReaderSize(bundle, 256<<10)
	if _, err := readBundleHeader(br); err != nil {
		return err
	}
	pack := filepath.Join(w.scratch, "bundle.pack")
	idx := filepath.Join(w.scratch, "bundle.idx")
	defer os.Remove(pack)
	defer os.Remove(idx)
	f, err := os.Create(pack)
	if err != nil {
		return fmt.Errorf("write pack index: %w", err)
	}
	_, err = io.Copy(f, br)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write pack index: %w", err)
	}
	if _, err := w.scratchGit().run(ctx, withArgs(quietConfig, "index-pack", "-o", idx, pack)...); err != nil {
		return gitError(err, "index the bundle's pack")
	}
	data, err := os.ReadFile(idx)
	if err != nil {
		return fmt.Errorf("write pack index: %w", err)
	}
	_, err = out.Write(data)
	return err
}
