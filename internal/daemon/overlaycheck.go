package daemon

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/bangerdev/banger/internal/vmm"
)

// checkOverlay refuses a VM's qcow2 overlay whose header names anything
// but backing. The VM's QEMU (an unprivileged user, possibly taken over
// by its guest) can write the file, header included, and qemu-img runs
// as the daemon's user: a header naming another backing file
// (/etc/shadow) or an external data file would have qemu-img read that
// host file into a disk the guest reads next. The header is read here,
// not by qemu-img, which would open what it names (a FIFO that blocks,
// a network block device).
func checkOverlay(overlay string, backing vmm.Layer) error {
	f, err := os.OpenFile(overlay, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("inspect overlay: %w", err)
	}
	defer f.Close()
	h, err := readQcow2Header(f)
	if err != nil {
		return fmt.Errorf("overlay %s: %w: refusing it (its VM may have rewritten it)", overlay, err)
	}
	switch {
	case h.dataFile:
		return fmt.Errorf("overlay %s names an external data file: refusing it (its VM may have rewritten it)", overlay)
	case h.backing != backing.Path || h.backingFormat != backing.Format:
		return fmt.Errorf("overlay %s names backing file %q (%s), not %q (%s): refusing it (its VM may have rewritten it)",
			overlay, h.backing, h.backingFormat, backing.Path, backing.Format)
	}
	return nil
}

// qcow2Header is what of a qcow2 header decides which other files
// opening the image opens.
type qcow2Header struct {
	backing, backingFormat string
	dataFile               bool
}

const (
	qcow2Magic = 0x514649fb
	// qcow2IncompatDataFile is the incompatible feature bit of an
	// external data file.
	qcow2IncompatDataFile = 1 << 2
	// Header extensions (qcow2.txt).
	qcow2ExtEnd           = 0
	qcow2ExtBackingFormat = 0xe2792aca
	// A header, its extensions and the backing file name fit in the
	// first cluster; 64 KiB bounds the read.
	maxQcow2Header = 64 << 10
)

// readQcow2Header parses the header of a qcow2 file (docs/interop/qcow2.txt).
func readQcow2Header(r io.ReaderAt) (qcow2Header, error) {
	var h qcow2Header
	b := make([]byte, maxQcow2Header)
	n, err := r.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return h, err
	}
	b = b[:n]
	be := binary.BigEndian
	if len(b) < 72 || be.Uint32(b[0:]) != qcow2Magic {
		return h, errors.New("not a qcow2 file")
	}
	version := be.Uint32(b[4:])
	extAt := uint64(72)
	switch version {
	case 2:
	case 3:
		if len(b) < 104 {
			return h, errors.New("short qcow2 v3 header")
		}
		h.dataFile = be.Uint64(b[72:])&qcow2IncompatDataFile != 0
		extAt = uint64(be.Uint32(b[100:]))
		if extAt < 104 {
			return h, errors.New("bad qcow2 header length")
		}
	default:
		return h, fmt.Errorf("qcow2 version %d", version)
	}
	if off, size := be.Uint64(b[8:]), uint64(be.Uint32(b[16:])); off != 0 {
		if size == 0 || off > uint64(len(b)) || size > uint64(len(b))-off {
			return h, errors.New("backing file name outside the header")
		}
		h.backing = string(b[off : off+size])
	}
	for {
		if extAt+8 > uint64(len(b)) {
			return h, errors.New("header extensions run past the header")
		}
		typ, size := be.Uint32(b[extAt:]), uint64(be.Uint32(b[extAt+4:]))
		if typ == qcow2ExtEnd {
			break
		}
		data := extAt + 8
		if size > uint64(len(b))-data {
			return h, errors.New("header extension runs past the header")
		}
		if typ == qcow2ExtBackingFormat {
			h.backingFormat = string(bytes.TrimRight(b[data:data+size], "\x00"))
		}
		extAt = data + (size+7)&^7
	}
	if h.backing != "" && h.backingFormat == "" {
		// Without a recorded format QEMU probes the backing file.
		return h, errors.New("backing file without a format")
	}
	return h, nil
}

// checkVMOverlays runs checkOverlay on each of a VM's disks that is a
// qcow2 overlay, against the layer the daemon put under it.
func checkVMOverlays(disks ...vmm.Disk) error {
	for _, d := range disks {
		if d.Format != "qcow2" {
			continue
		}
		if len(d.Backing) == 0 {
			return fmt.Errorf("overlay %s has no recorded backing", d.Path)
		}
		if err := checkOverlay(d.Path, d.Backing[0]); err != nil {
			return err
		}
	}
	return nil
}
