package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

// The package list is a file of the image: reading it with debugfs must
// not buffer whatever size the image gives it.
func TestHealImageCapsDpkgStatus(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t, nil)
	var caps []int64
	d.runner = &system.Fake{Handler: func(ctx context.Context, c system.FakeCall) ([]byte, error) {
		if c.Argv[0] == "debugfs" && strings.HasPrefix(c.Argv[2], "cat ") {
			caps = append(caps, c.MaxStdout)
		}
		return []byte("Package: git\nStatus: install ok installed\nVersion: 1\n"), nil
	}}
	dir := t.TempDir()
	fakeKernel(t, filepath.Join(dir, image.FileKernel), "6.1.0-99-cloud-amd64")
	os.WriteFile(filepath.Join(dir, image.FileInitrd), []byte("initrd"), 0o644)
	os.WriteFile(filepath.Join(dir, image.FileRootfs), []byte("rootfs"), 0o644)
	img := store.Image{ID: "old1", Name: "old", Dir: dir, State: store.ImageStateManaged, Suite: "bookworm"}
	if err := d.store.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	if _, err := d.imageEngine().healImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	if len(caps) != 1 || caps[0] <= 0 {
		t.Fatalf("debugfs cat of the dpkg status ran with output caps %v, want one capped run", caps)
	}
}
