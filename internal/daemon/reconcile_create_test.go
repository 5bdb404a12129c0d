package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// TestReconcileUnwindsInterruptedCreate: a VM still "creating" when the
// daemon died is unwound by the next daemon exactly as a failed create
// would be: its VMM process is stopped, its directory removed and its row
// deleted. A running VM next to it is left alone.
func TestReconcileUnwindsInterruptedCreate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log syncBuffer
	d := testDaemon(t, nil)
	untilReconcile(ctx, d, &log)

	// The "VMM" the dead daemon had started: a real process, reaped when
	// it dies so its PID is seen to go.
	vmmProc := exec.Command("sleep", "120")
	if err := vmmProc.Start(); err != nil {
		t.Skipf("no sleep: %v", err)
	}
	waited := make(chan struct{})
	go func() { vmmProc.Wait(); close(waited) }()
	defer vmmProc.Process.Kill()
	st, err := system.ProcStartTime(vmmProc.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	imgDir := t.TempDir()
	img := store.Image{Name: "base", Dir: imgDir}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vmDir := filepath.Join(t.TempDir(), "vm")
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"root.qcow2", "work.ext4", "console.log"} {
		os.WriteFile(filepath.Join(vmDir, f), []byte("x"), 0o644)
	}
	half := store.VM{ID: "c1", Name: "half", ImageID: img.ID, State: api.VMCreating, Dir: vmDir, VMM: "qemu", NetMode: "user",
		PID: vmmProc.Process.Pid, PIDStartTime: st, CPUs: 1, MemoryMiB: 128, Egress: "none", CreatedAt: time.Now()}
	other := store.VM{ID: "s1", Name: "other", ImageID: img.ID, State: api.VMStopped, Dir: t.TempDir(), VMM: "qemu", NetMode: "user",
		CPUs: 1, MemoryMiB: 128, Egress: "none", CreatedAt: time.Now()}
	for _, vm := range []*store.VM{&half, &other} {
		if err := d.store.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
		if err := d.store.UpdateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}

	if err := d.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(15 * time.Second):
		t.Fatal("the interrupted create's VMM is still running")
	}
	if _, err := os.Stat(vmDir); !os.IsNotExist(err) {
		t.Fatalf("the interrupted create's directory is still there: %v", err)
	}
	if _, err := d.store.GetVM(ctx, "half"); err == nil {
		t.Fatal("the interrupted create's row is still there")
	}
	if got, err := d.store.GetVM(ctx, "other"); err != nil || got.State != api.VMStopped {
		t.Fatalf("the other VM: %+v %v", got, err)
	}
	if !strings.Contains(log.String(), "create was interrupted") {
		t.Fatalf("no log line for the unwind:\n%s", log.String())
	}
}
