package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// reconcile re-adopts a Firecracker VM through its API socket (not QMP),
// and a recorded PID whose start time differs is not taken for the VMM.
func TestReconcileFirecracker(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends the background agent redial reconcile starts
	var log syncBuffer
	d := testDaemon(t, nil)
	untilReconcile(ctx, d, &log)

	dir, err := os.MkdirTemp("", "rc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "fc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/" {
			w.WriteHeader(400)
			fmt.Fprint(w, `{"fault_message":"unexpected"}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"app_name": "Firecracker", "id": "v1", "state": "Running", "vmm_version": "1.12.0"})
	})}
	go srv.Serve(ln)
	defer srv.Close()

	img := store.Image{Name: "base", Dir: dir}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	st, err := system.ProcStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	state := fmt.Sprintf(`{"api_socket":%q,"vsock_uds":%q,"guest_cid":3,"agent_vsock_port":10000}`, sock, filepath.Join(dir, "vsock.sock"))
	live := store.VM{ID: "v1", Name: "live", ImageID: img.ID, State: api.VMRunning, Dir: dir, VMM: "firecracker", NetMode: "tap",
		PID: os.Getpid(), PIDStartTime: st, VMMStateJSON: state, CPUs: 1, MemoryMiB: 128, Egress: "none", CreatedAt: time.Now()}
	recycled := live
	recycled.ID, recycled.Name, recycled.PIDStartTime = "v2", "recycled", st+1
	for _, vm := range []*store.VM{&live, &recycled} {
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
	if !strings.Contains(log.String(), "re-adopted running VM") || !strings.Contains(log.String(), "vmm_status=Running") {
		t.Fatalf("live VM not re-adopted through the Firecracker API:\n%s", log.String())
	}
	got, err := d.store.GetVM(ctx, "recycled")
	if err != nil || got.State != api.VMStopped {
		t.Fatalf("recycled PID: state %q, %v", got.State, err)
	}
	got, _ = d.store.GetVM(ctx, "live")
	if got.State != api.VMRunning || got.VMMStateJSON != state {
		t.Fatalf("live VM record changed: %+v", got)
	}
}

// syncBuffer is a log sink that goroutines may write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
