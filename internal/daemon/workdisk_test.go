package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

func testDaemon(t *testing.T, log *bytes.Buffer) *Daemon {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if log == nil {
		log = &bytes.Buffer{}
	}
	return &Daemon{
		cfg:     config.Default(),
		log:     slog.New(slog.NewTextHandler(log, nil)),
		store:   st,
		runner:  system.Exec{},
		drivers: newDrivers(config.Default()),
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// debugfsCat reads a file from an ext4 image without mounting it.
func debugfsCat(t *testing.T, img, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return string(out)
}

func TestMakeWorkDiskMarksSeedFingerprint(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs")
	d := testDaemon(t, nil)
	imgDir := t.TempDir()
	seed := filepath.Join(imgDir, image.DirWorkSeed)
	os.MkdirAll(seed, 0o755)
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("# seed bashrc\n"), 0o644)
	img := store.Image{Dir: imgDir}
	vmDir := t.TempDir()

	fp, err := d.makeWorkDisk(context.Background(), img, vmDir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := image.WorkSeedFingerprint(seed)
	if fp != want {
		t.Fatalf("fingerprint %s, want %s", fp, want)
	}
	disk := filepath.Join(vmDir, paths.FileWorkDisk)
	if got := debugfsCat(t, disk, "/"+image.FileWorkSeedMark); strings.TrimSpace(got) != fp {
		t.Fatalf("mark on disk %q, want %s", got, fp)
	}
	if got := debugfsCat(t, disk, "/.bashrc"); got != "# seed bashrc\n" {
		t.Fatalf("seed not copied: %q", got)
	}
	if _, err := os.Stat(filepath.Join(vmDir, dirWorkStaging)); !os.IsNotExist(err) {
		t.Fatalf("staging dir left behind: %v", err)
	}
	// The image's seed must not get the mark.
	if _, err := os.Stat(filepath.Join(seed, image.FileWorkSeedMark)); !os.IsNotExist(err) {
		t.Fatal("mark written into the image's seed")
	}
}

func TestGrowWorkDisk(t *testing.T) {
	needTools(t, "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs")
	d := testDaemon(t, nil)
	vmDir := t.TempDir()
	if _, err := d.makeWorkDisk(context.Background(), store.Image{Dir: t.TempDir()}, vmDir, 1<<30); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "dev", Dir: vmDir, WorkDiskBytes: 1 << 30}

	// Shrinking is refused with a clear, typed error; nothing changes.
	err := d.growWorkDisk(context.Background(), &vm, 512<<20)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, "shrinking it") || !strings.Contains(ae.Hint, "--disk 1 or more") {
		t.Fatalf("shrink: %v", err)
	}
	// Same size: no-op.
	if err := d.growWorkDisk(context.Background(), &vm, 1<<30); err != nil {
		t.Fatal(err)
	}

	if err := d.growWorkDisk(context.Background(), &vm, 2<<30); err != nil {
		t.Fatal(err)
	}
	if vm.WorkDiskBytes != 2<<30 {
		t.Fatalf("WorkDiskBytes %d", vm.WorkDiskBytes)
	}
	disk := filepath.Join(vmDir, paths.FileWorkDisk)
	st, _ := os.Stat(disk)
	if st.Size() != 2<<30 {
		t.Fatalf("file size %d", st.Size())
	}
	out, err := exec.Command("dumpe2fs", "-h", disk).Output()
	if err != nil {
		t.Fatal(err)
	}
	var blocks, bsize int64
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, ":")
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks = atoi(strings.TrimSpace(v))
		case "Block size":
			bsize = atoi(strings.TrimSpace(v))
		}
	}
	if blocks*bsize != 2<<30 {
		t.Fatalf("filesystem is %d bytes after grow", blocks*bsize)
	}
}

func atoi(s string) int64 {
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func TestCollectAuthFiles(t *testing.T) {
	var log bytes.Buffer
	d := testDaemon(t, &log)
	home := t.TempDir()
	d.cfg.Auth.Home = home
	secret := "sk-SECRET-do-not-log"
	os.MkdirAll(filepath.Join(home, ".claude"), 0o700)
	os.WriteFile(filepath.Join(home, ".claude/.credentials.json"), []byte(secret), 0o600)
	os.WriteFile(filepath.Join(home, ".claude.json"), []byte(`{"x":"`+secret+`"}`), 0o600)
	// A directory where a file is expected: skipped with a warning.
	os.MkdirAll(filepath.Join(home, ".pi/agent/auth.json"), 0o700)

	files, names := d.collectAuthFiles("dev")
	if strings.Join(names, ",") != ".claude/.credentials.json,.claude.json" || len(files) != 2 {
		t.Fatalf("names %v", names)
	}
	if string(files[0].Data) != secret {
		t.Fatalf("data %q", files[0].Data)
	}
	logs := log.String()
	if strings.Contains(logs, secret) {
		t.Fatalf("secret in log: %s", logs)
	}
	if n := strings.Count(logs, "not found on the host"); n != 1 || !strings.Contains(logs, ".local/share/opencode/auth.json") {
		t.Fatalf("want one info line naming the missing file:\n%s", logs)
	}
	if !strings.Contains(logs, "auth file skipped") {
		t.Fatalf("no warning for the directory:\n%s", logs)
	}
	if got := decodeNames(encodeNames(names)); strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("names round trip: %v", got)
	}

	// An empty list syncs nothing and says nothing.
	log.Reset()
	d.cfg.Auth.Files = nil
	if files, names := d.collectAuthFiles("dev"); files != nil || names != nil || log.Len() != 0 {
		t.Fatalf("empty list: %v %v %s", files, names, log.String())
	}
}

func TestWaitOpencode(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	d.cfg.VM.BootTimeout.Duration = 3 * time.Second
	img := store.Image{Name: "img", Dir: "/x"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Name: "dev", ImageID: img.ID}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	// Reserve a port nobody listens on yet: the wait must time out with
	// a hint, then succeed once an HTTP server answers there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if _, err := d.store.AllocatePort(ctx, vm.ID, guestOpencodePort, func() (int, error) { return port, nil }); err != nil {
		t.Fatal(err)
	}
	err = d.waitOpencode(ctx, vm)
	var ae *api.Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Hint, "--no-wait-services") {
		t.Fatalf("no listener: %v", err)
	}
	l, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", port, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/global/health" {
			w.WriteHeader(404)
		}
	})}
	go srv.Serve(l)
	defer srv.Close()
	if err := d.waitOpencode(ctx, vm); err != nil {
		t.Fatal(err)
	}
}
