package image

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
)

// KernelVersion reads the release string ("6.1.0-28-cloud-amd64") from an
// x86 bzImage's setup header, without running or decompressing it.
func KernelVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read kernel version: %w", err)
	}
	defer f.Close()
	head := make([]byte, 64<<10)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF {
		return "", fmt.Errorf("read kernel version: %w", err)
	}
	return ParseKernelVersion(head[:n])
}

// ParseKernelVersion extracts the release from the first bytes of a
// bzImage: "HdrS" at 0x202, and at 0x20e the offset (from 0x200) of a
// NUL-terminated version string whose first word is the release.
func ParseKernelVersion(head []byte) (string, error) {
	if len(head) < 0x210 || string(head[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("%w: not an x86 bzImage (no HdrS setup header)", ErrInvalid)
	}
	off := int(binary.LittleEndian.Uint16(head[0x20e:])) + 0x200
	if off >= len(head) {
		return "", fmt.Errorf("%w: kernel version string out of range", ErrInvalid)
	}
	s := head[off:]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	fields := strings.Fields(string(s))
	if len(fields) == 0 {
		return "", fmt.Errorf("%w: empty kernel version string", ErrInvalid)
	}
	return fields[0], nil
}
