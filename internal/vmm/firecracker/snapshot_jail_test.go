package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A compromised jailed Firecracker owns its jail root: in place of the
// snapshot files it can leave a symlink or a hard link to a host file.
// finishSave must neither change that file's owner or mode nor take its
// content as the snapshot (a restore would map it as guest memory).
func TestFinishSaveRefusesLinksFromJail(t *testing.T) {
	for _, kind := range []string{"symlink", "hardlink", "fifo"} {
		t.Run(kind, func(t *testing.T) {
			jail := JailPlan{Root: t.TempDir()}
			outside := filepath.Join(t.TempDir(), "host-secret")
			if err := os.WriteFile(outside, []byte("host secret"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(jail.HostPath(jailSaveState), []byte("saved state"), 0o644); err != nil {
				t.Fatal(err)
			}
			var err error
			switch kind {
			case "symlink":
				err = os.Symlink(outside, jail.HostPath(jailSaveMem))
			case "hardlink":
				err = os.Link(outside, jail.HostPath(jailSaveMem))
			case "fifo":
				// Opened for reading, it would block the daemon.
				err = syscall.Mkfifo(jail.HostPath(jailSaveMem), 0o600)
			}
			if err != nil {
				t.Skip(err)
			}
			dst := t.TempDir()
			_, err = finishSave(context.Background(), State{Jail: &jail}, dst, snapshotMeta{Format: metaFormat, MemoryMiB: 512, VCPUs: 2, Jailed: true})
			if err == nil {
				t.Fatal("finishSave took a link to a host file as the memory file")
			}
			fi, err := os.Stat(outside)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("host file's mode changed to %o", fi.Mode().Perm())
			}
			if _, err := readMeta(dst); err == nil {
				t.Error("metadata written for a snapshot whose memory is a host file")
			}
		})
	}
}
