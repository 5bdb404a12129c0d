package image

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/system"
)

// lz4LegacyFrame compresses payload in the LZ4 legacy frame Debian's x86
// kernels use, with the real lz4 tool (a required host tool).
func lz4LegacyFrame(t *testing.T, payload []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("lz4"); err != nil {
		t.Skip("lz4 not installed (banger doctor requires it)")
	}
	cmd := exec.Command("lz4", "-l", "-c", "-")
	cmd.Stdin = bytes.NewReader(payload)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMakeVmlinux(t *testing.T) {
	dir := t.TempDir()
	elf := append([]byte("\x7fELF\x02\x01\x01"), bytes.Repeat([]byte("kernel text "), 4096)...)
	// A bzImage: setup code, the compressed payload, then trailing data
	// (lz4 warns about it; the ELF is still whole).
	bz := append([]byte("MZ setup header and decompressor "), lz4LegacyFrame(t, elf)...)
	bz = append(bz, []byte("trailing relocs and padding")...)
	vmlinuz := filepath.Join(dir, FileKernel)
	os.WriteFile(vmlinuz, bz, 0o644)
	b := &Builder{Runner: system.Exec{}}
	out := filepath.Join(dir, FileVmlinux)
	if err := b.makeVmlinux(context.Background(), vmlinuz, out); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, elf) {
		t.Fatalf("vmlinux differs from the ELF: %d bytes vs %d", len(got), len(elf))
	}

	// A payload that is not ELF is refused, not recorded.
	bad := append([]byte("MZ"), lz4LegacyFrame(t, []byte("not a kernel at all"))...)
	os.WriteFile(vmlinuz, bad, 0o644)
	if err := b.makeVmlinux(context.Background(), vmlinuz, out); err == nil || !strings.Contains(err.Error(), "not ELF") {
		t.Fatalf("non-ELF accepted: %v", err)
	}
	os.WriteFile(vmlinuz, []byte("MZ uncompressed"), 0o644)
	if err := b.makeVmlinux(context.Background(), vmlinuz, out); err == nil || !strings.Contains(err.Error(), "not LZ4") {
		t.Fatalf("no LZ4 frame accepted: %v", err)
	}
}
