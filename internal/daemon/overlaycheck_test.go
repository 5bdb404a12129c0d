package daemon

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// A VM's QEMU can rewrite its overlays' headers. Before a snapshot
// makes them layers (qemu-img create opens them) and before a flatten
// copies them (qemu-img rebase/convert, as the daemon's user), a header
// naming a host file as backing or data file is refused; genuine
// overlays (on the image's rootfs, on a qcow2 layer) pass.
func TestCheckVMOverlaysRefusesRewrittenHeaders(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	ctx := context.Background()
	r := system.Exec{}
	dir := t.TempDir()
	write := func(p, content string) {
		t.Helper()
		b := make([]byte, 1<<20)
		copy(b, content)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rootfs := filepath.Join(dir, "rootfs.ext4")
	secret := filepath.Join(dir, "shadow")
	write(rootfs, "ROOTFS")
	write(secret, "root:SECRET-HASH")
	qimg := func(args ...string) {
		t.Helper()
		if out, err := r.Run(ctx, "qemu-img", args...); err != nil {
			t.Fatalf("qemu-img %v: %v %s", args, err, out)
		}
	}
	layer := filepath.Join(dir, "root.qcow2")
	qimg("create", "-q", "-f", "qcow2", "-b", rootfs, "-F", "raw", layer)
	overlay := func(name string) vmm.Disk {
		p := filepath.Join(dir, name)
		qimg("create", "-q", "-f", "qcow2", "-b", layer, "-F", "qcow2", p)
		return vmm.Disk{Path: p, Format: "qcow2", Backing: []vmm.Layer{{Path: layer, Format: "qcow2"}, {Path: rootfs, Format: "raw"}}}
	}
	raw := vmm.Disk{Path: filepath.Join(dir, "work.raw"), Format: "raw"}
	if err := checkVMOverlays(overlay("good.qcow2"), raw); err != nil {
		t.Fatalf("genuine overlay refused: %v", err)
	}
	if err := checkVMOverlays(vmm.Disk{Path: layer, Format: "qcow2", Backing: []vmm.Layer{{Path: rootfs, Format: "raw"}}}); err != nil {
		t.Fatalf("genuine overlay on the rootfs refused: %v", err)
	}
	rebased := overlay("rebased.qcow2")
	qimg("rebase", "-q", "-u", "-b", secret, "-F", "raw", rebased.Path)
	dataFile := overlay("datafile.qcow2")
	qimg("create", "-q", "-f", "qcow2", "-b", layer, "-F", "qcow2", "-o", "data_file="+filepath.Join(dir, "scratch"), dataFile.Path)
	for name, d := range map[string]vmm.Disk{"backing rewritten": rebased, "data file": dataFile} {
		if err := checkVMOverlays(raw, d); err == nil {
			t.Errorf("%s: overlay accepted", name)
		}
	}
	// What an accepted check would have let through: qemu-img reading
	// the host file into the guest's next disk.
	out := filepath.Join(dir, "out.raw")
	qimg("convert", "-q", "-f", "qcow2", "-O", "raw", rebased.Path, out)
	if b, _ := os.ReadFile(out); !bytes.Contains(b, []byte("SECRET-HASH")) {
		t.Log("(qemu-img did not follow the rewritten header here)")
	}
}

// The header comes from a VM's QEMU: any bytes.
func FuzzReadQcow2Header(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Add(append([]byte("QFI\xfb\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x48\x00\x00\x00\x04"), make([]byte, 80)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = readQcow2Header(bytes.NewReader(b))
	})
}
