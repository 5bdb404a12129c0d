package daemon

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshkeys"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// recordingRunner runs commands for real and keeps every argv, so a test
// can check that no secret ever reached a command line.
type recordingRunner struct {
	system.Exec
	mu    sync.Mutex
	argvs []string
}

func (r *recordingRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	r.argvs = append(r.argvs, name+" "+strings.Join(args, " "))
	r.mu.Unlock()
	return r.Exec.Run(ctx, name, args...)
}

func (r *recordingRunner) RunIn(ctx context.Context, o system.RunOpts, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	r.argvs = append(r.argvs, name+" "+strings.Join(args, " ")+" env="+strings.Join(o.Env, " "))
	r.mu.Unlock()
	return r.Exec.RunIn(ctx, o, name, args...)
}

func TestOpencodePasswordPerVM(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	pa, err := ensureOpencodePassword(a)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := ensureOpencodePassword(b)
	if err != nil {
		t.Fatal(err)
	}
	if pa == pb || !validOpencodePassword(pa) || len(pa) < 32 {
		t.Fatalf("passwords %q %q: want two different random ones", pa, pb)
	}
	// Stable: a second boot keeps the password the owner already has.
	if again, err := ensureOpencodePassword(a); err != nil || again != pa {
		t.Fatalf("second ensure: %q %v, want %q", again, err, pa)
	}
	st, err := os.Stat(filepath.Join(a, fileOpencodePassword))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("password file mode %v %v, want 0600", st.Mode().Perm(), err)
	}
}

func TestOpencodePasswordMalformedNotQuoted(t *testing.T) {
	dir := t.TempDir()
	secret := "abcdefghijklmnopqrstuvwx\nEVIL=1"
	os.WriteFile(filepath.Join(dir, fileOpencodePassword), []byte(secret), 0o600)
	_, err := ensureOpencodePassword(dir)
	if err == nil || strings.Contains(err.Error(), "abcdefgh") {
		t.Fatalf("malformed password file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, fileOpencodePassword)); string(b) != secret {
		t.Fatalf("a malformed password file was replaced")
	}
}

// The seed disk carries the password as opencode.service's
// EnvironmentFile, 0600; no command line and no log line holds it.
func TestSeedDiskCarriesOpencodePassword(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	var logBuf bytes.Buffer
	d := testDaemon(t, &logBuf)
	rr := &recordingRunner{}
	d.runner = rr
	tmp := t.TempDir()
	d.layout = paths.Layout{SSHDir: filepath.Join(tmp, "ssh")}
	d.agentPath = filepath.Join(tmp, "banger-agent")
	os.WriteFile(d.agentPath, []byte("#!/bin/sh\n"), 0o755)
	vm := &store.VM{ID: "abcd", Name: "dev", Dir: filepath.Join(tmp, "vm")}
	os.MkdirAll(vm.Dir, 0o700)
	priv, _, err := sshkeys.GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vm.Dir, fileHostKey), priv, 0o600)

	if err := d.makeSeedDisk(context.Background(), vm, false); err != nil {
		t.Fatal(err)
	}
	pw, err := readOpencodePassword(vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(vm.Dir, paths.FileSeedDisk)
	if got := debugfsCat(t, seed, "/"+seedOpencodeEnv); got != "OPENCODE_SERVER_PASSWORD="+pw+"\n" {
		t.Fatalf("seed %s = %q", seedOpencodeEnv, got)
	}
	out, err := exec.Command("debugfs", "-R", "stat /"+seedOpencodeEnv, seed).Output()
	if err != nil || !strings.Contains(string(out), "Mode:  0600") {
		t.Fatalf("seed %s mode: %v\n%s", seedOpencodeEnv, err, out)
	}
	// A new boot gets a fresh seed with the same password.
	if err := d.makeSeedDisk(context.Background(), vm, false); err != nil {
		t.Fatal(err)
	}
	if got := debugfsCat(t, seed, "/"+seedOpencodeEnv); got != "OPENCODE_SERVER_PASSWORD="+pw+"\n" {
		t.Fatalf("second boot's seed %s = %q", seedOpencodeEnv, got)
	}
	for _, a := range rr.argvs {
		if strings.Contains(a, pw) {
			t.Fatalf("password on a command line: %s", a)
		}
	}
	if strings.Contains(logBuf.String(), pw) {
		t.Fatalf("password in the daemon log")
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, dirSeed)); !os.IsNotExist(err) {
		t.Fatalf("seed staging directory left behind: %v", err)
	}
}

func TestOpencodeView(t *testing.T) {
	manifest := `{"services":["opencode"]}`
	user := api.VM{Ports: []api.Port{{HostPort: 2222, GuestPort: 22}, {HostPort: 40961, GuestPort: 4096}}}
	if oc := opencodeView(user, manifest); oc == nil || oc.URL != "http://127.0.0.1:40961" || oc.Username != "opencode" || oc.Password != "" {
		t.Fatalf("user mode: %+v", oc)
	}
	tap := api.VM{Address: "172.30.0.5"}
	if oc := opencodeView(tap, manifest); oc == nil || oc.URL != "http://172.30.0.5:4096" {
		t.Fatalf("tap mode: %+v", oc)
	}
	if oc := opencodeView(user, `{"services":[]}`); oc != nil {
		t.Fatalf("image without opencode: %+v", oc)
	}
	if !image.HasService(manifest, image.ServiceOpencode) {
		t.Fatal("manifest fixture")
	}
}

// Only GET /v1/vms/{name} carries the password: lists and the view that
// operation results store do not.
func TestOpencodePasswordOnlyInShow(t *testing.T) {
	d := testDaemon(t, nil)
	ctx := context.Background()
	img := store.Image{ID: "img1", Name: "agents", Dir: t.TempDir(), Manifest: `{"services":["opencode"]}`}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{ID: "v1", Name: "dev", ImageID: img.ID, State: api.VMRunning, Dir: t.TempDir(), NetMode: "user"}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.AllocatePort(ctx, vm.ID, guestOpencodePort, func() (int, error) { return 40961, nil }); err != nil {
		t.Fatal(err)
	}
	pw, err := ensureOpencodePassword(vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	view := d.vmView(ctx, vm)
	if view.Opencode == nil || view.Opencode.Password != "" {
		t.Fatalf("vmView (stored in operation results) carries %+v", view.Opencode)
	}
	h := d.routes()
	for path, want := range map[string]bool{"/" + api.Version + "/vms/dev": true, "/" + api.Version + "/vms": false} {
		rec := httptestGet(t, h, path)
		if got := strings.Contains(rec, pw); got != want {
			t.Errorf("GET %s carries the password: %t, want %t", path, got, want)
		}
	}
	// Stopped, its forwarded port is anyone's: no password until it runs.
	if err := d.store.SetVMState(ctx, vm.ID, api.VMStopped, ""); err != nil {
		t.Fatal(err)
	}
	if rec := httptestGet(t, h, "/"+api.Version+"/vms/dev"); strings.Contains(rec, pw) {
		t.Error("GET of a stopped VM carries the password")
	}
}

func httptestGet(t *testing.T, h http.Handler, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != 200 {
		t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	return rec.Body.String()
}
