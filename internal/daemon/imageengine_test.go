package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/store"
)

// passChecks passes the host checks the tests reach and counts them;
// any other check panics through the nil imageChecks.
type passChecks struct {
	imageChecks
	importErr  error
	imported   []string
	preflights int
}

func (c *passChecks) preflight(context.Context, int) error { c.preflights++; return nil }
func (c *passChecks) checkBuildSpace(bool) error           { return nil }
func (c *passChecks) checkImportSpace(src string) error {
	c.imported = append(c.imported, src)
	return c.importErr
}

// testImageEngine is an image engine over a store and fakes, with no
// *Daemon behind it.
func testImageEngine(t *testing.T, checks imageChecks) *imageEngine {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newImageEngine(imageDeps{
		store:  st,
		layout: paths.Layout{ImagesDir: t.TempDir()},
		cfg:    config.Default(),
		log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		checks: checks,
		builds: &buildGate{},
	})
}

// TestImageEngineImportAsksItsChecks: the engine reaches the host's
// space check through its deps and stops before copying anything.
func TestImageEngineImportAsksItsChecks(t *testing.T) {
	src := t.TempDir()
	for _, f := range []string{image.FileRootfs, image.FileKernel} {
		if err := os.WriteFile(filepath.Join(src, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := image.WriteManifest(src, image.Manifest{}); err != nil {
		t.Fatal(err)
	}
	if err := image.WriteMeta(src, image.Meta{Name: "imported", Fingerprint: "fp"}); err != nil {
		t.Fatal(err)
	}
	full := errors.New("disk full")
	checks := &passChecks{importErr: full}
	e := testImageEngine(t, checks)
	if _, err := e.ImportImage(context.Background(), src); !errors.Is(err, full) {
		t.Fatalf("err = %v, want the check's", err)
	}
	if len(checks.imported) != 1 || checks.imported[0] != src {
		t.Fatalf("import checks = %v", checks.imported)
	}
	if ents, _ := os.ReadDir(e.layout.ImagesDir); len(ents) != 0 {
		t.Fatalf("import left %d entries", len(ents))
	}
}

// TestImageBuildOneAtATime: a build while another runs is refused once
// the checks passed, with the hint to watch the running one.
func TestImageBuildOneAtATime(t *testing.T) {
	checks := &passChecks{}
	e := testImageEngine(t, checks)
	if !e.builds.acquire() {
		t.Fatal("a fresh gate refused")
	}
	_, err := e.BuildImage(context.Background(), api.BuildImageRequest{Base: true})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || ae.Message != "an image build is already running" {
		t.Fatalf("err = %#v", err)
	}
	if checks.preflights != 1 {
		t.Fatalf("preflight ran %d times, want 1", checks.preflights)
	}
	e.builds.release()
	if !e.builds.acquire() {
		t.Fatal("a released gate refused")
	}
}
