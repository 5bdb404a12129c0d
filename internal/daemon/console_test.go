package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// TestConsoleCapped: a guest printing far more than the cap through
// QEMU's console socket costs at most two generations of the cap on
// disk, and the newest line survives.
func TestConsoleCapped(t *testing.T) {
	d := testDaemon(t, nil)
	d.cfg.Limits.ConsoleLogMiB = 1
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, paths.FileConsoleSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const lines = 200000 // ~10 MB
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var b bytes.Buffer
		for i := range lines {
			fmt.Fprintf(&b, "[%9d] guest printing forever, line %d\n", i, i)
			if b.Len() > 64<<10 {
				c.Write(b.Bytes())
				b.Reset()
			}
		}
		c.Write(b.Bytes())
	}()
	done := d.keepConsole(context.Background(), store.VM{Dir: dir, VMM: "qemu"})
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("console pump did not end when QEMU closed the socket")
	}
	var total int64
	for _, n := range []string{paths.FileConsoleLog, paths.FileConsoleLog + ".1"} {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1<<20 {
			t.Fatalf("%s is %d bytes, cap 1 MiB", n, st.Size())
		}
		total += st.Size()
	}
	if total < 1<<20 {
		t.Fatalf("only %d bytes kept", total)
	}
	cur, _ := os.ReadFile(filepath.Join(dir, paths.FileConsoleLog))
	if want := fmt.Sprintf("line %d\n", lines-1); !strings.HasSuffix(string(cur), want) {
		t.Fatalf("newest line lost; log ends %q", cur[max(0, len(cur)-60):])
	}
	d.consoles.mu.Lock()
	n := len(d.consoles.byDir)
	d.consoles.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d console pumps still registered", n)
	}
}

// TestLogsShowRotatedConsole: `vm logs` shows the older generation then
// the current one.
func TestLogsShowRotatedConsole(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	d.drivers = newDrivers(d.cfg)
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "dev", ImageID: img.ID, Dir: t.TempDir(), State: api.VMStopped}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vm.Dir, paths.FileConsoleLog+".1"), []byte("older\n"), 0o600)
	os.WriteFile(filepath.Join(vm.Dir, paths.FileConsoleLog), []byte("newest\n"), 0o600)
	srv := httptest.NewServer(d.routes())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/" + api.Version + "/vms/dev/logs")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "older\nnewest\n" {
		t.Fatalf("logs = %q", b)
	}
}
