package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentclient"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/workspace"
)

func gitT(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_OPTIONAL_LOCKS=0",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@x.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@x.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// hostRepo is a small repository with a commit, a staged and an
// unstaged change and an untracked file.
func hostRepo(t *testing.T) string {
	dir := t.TempDir()
	gitT(t, dir, "init", "-q", "-b", "main")
	for name, body := range map[string]string{"a.txt": "a\n", "sub/b.txt": "b\n"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	gitT(t, dir, "add", ".")
	gitT(t, dir, "commit", "-qm", "one")
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("staged\n"), 0o644)
	gitT(t, dir, "add", "a.txt")
	os.WriteFile(filepath.Join(dir, "sub/b.txt"), []byte("unstaged\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("new\n"), 0o644)
	return dir
}

// prepare runs a whole prepare from host repo into guest dir through the
// real agent and client; fail, when set, breaks the overlay stream.
func prepare(t *testing.T, c *agentclient.Client, repoDir, guestDir string, force bool, fail error) (workspace.ApplyResult, []string, error) {
	t.Helper()
	ctx := context.Background()
	repo, err := workspace.Resolve(ctx, system.Exec{}, repoDir)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := workspace.Prepare(ctx, system.Exec{}, repo, workspace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var bundle bytes.Buffer
	if err := ws.WriteBundle(ctx, &bundle); err != nil {
		t.Fatal(err)
	}
	var stages []string
	res, err := c.PrepareWorkspace(ctx, workspace.ApplyRequest{Dir: guestDir, Force: force, Plan: ws.Plan}, agentclient.WorkspaceStreams{
		Bundle:    func(w io.Writer) error { _, err := w.Write(bundle.Bytes()); return err },
		PackIndex: func(w io.Writer) error { return ws.WritePackIndex(ctx, bytes.NewReader(bundle.Bytes()), w) },
		Overlay: func(w io.Writer) error {
			if fail != nil {
				w.Write([]byte("partial"))
				return fail
			}
			_, err := ws.WriteOverlay(ctx, w)
			return err
		},
		Entries: func(w io.Writer) error { return ws.WriteEntries(ctx, w) },
	}, func(s string) { stages = append(stages, s) })
	return res, stages, err
}

func TestWorkspacePrepareReplacePull(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	host := hostRepo(t)
	guest := filepath.Join(t.TempDir(), "repo")

	res, stages, err := prepare(t, c, host, guest, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replaced || res.Head != strings.TrimSpace(gitT(t, host, "rev-parse", "HEAD")) {
		t.Fatalf("first prepare: %+v", res)
	}
	if got := strings.Join(stages, ","); got != "transfer,clone,overlay" {
		t.Fatalf("stages = %s", got)
	}
	if h, g := gitT(t, host, "status", "--porcelain=v2"), gitT(t, guest, "status", "--porcelain=v2"); h != g {
		t.Fatalf("status differs\nhost:\n%s\nguest:\n%s", h, g)
	}

	// A failed prepare leaves the workspace as it was, and no build
	// directory behind.
	os.WriteFile(filepath.Join(guest, "marker"), []byte("keep"), 0o644)
	if _, _, err := prepare(t, c, host, guest, false, errors.New("disk on fire")); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("broken stream: err = %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(guest, "marker")); err != nil || string(b) != "keep" {
		t.Fatalf("failed prepare touched the workspace: %q %v", b, err)
	}
	waitNoBuildDirs(t, filepath.Dir(guest))

	// A process working inside the workspace blocks a replace, unless
	// forced.
	sleeper := exec.Command("sleep", "30")
	sleeper.Dir = filepath.Join(guest, "sub")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	_, _, err = prepare(t, c, host, guest, false, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Message, "sleep") || !strings.Contains(ae.Hint, "--force") {
		t.Fatalf("busy workspace: err = %v", err)
	}
	res, _, err = prepare(t, c, host, guest, true, nil)
	if err != nil || !res.Replaced {
		t.Fatalf("forced replace: %+v %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(guest, "marker")); !os.IsNotExist(err) {
		t.Fatalf("the replaced workspace is still there: %v", err)
	}
	waitNoBuildDirs(t, filepath.Dir(guest))

	// Work in the guest comes back with export + ImportPull, and only the
	// commits the host lacks travel.
	gitT(t, guest, "checkout", "-q", "-b", "agent")
	gitT(t, guest, "commit", "-qam", "agent work")
	repo, err := workspace.Resolve(context.Background(), system.Exec{}, host)
	if err != nil {
		t.Fatal(err)
	}
	var bundle bytes.Buffer
	refs, n, err := c.ExportWorkspace(context.Background(), workspace.ExportRequest{Dir: guest, Have: []string{repo.Head}}, &bundle)
	if err != nil || n == 0 {
		t.Fatalf("export: %d bytes, %v", n, err)
	}
	f := filepath.Join(t.TempDir(), "b.bundle")
	os.WriteFile(f, bundle.Bytes(), 0o644)
	pulled, err := workspace.ImportPull(context.Background(), system.Exec{}, repo, "vm1", refs, f)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(gitT(t, guest, "rev-parse", "HEAD"))
	if got := strings.TrimSpace(gitT(t, host, "rev-parse", "refs/remotes/banger/vm1/agent")); got != want || len(pulled.Updated) != 2 {
		t.Fatalf("pulled %s (want %s): %+v", got, want, pulled)
	}
}

func waitNoBuildDirs(t *testing.T, parent string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _ := filepath.Glob(filepath.Join(parent, prepareDirPrefix+"*"))
		if len(m) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("build directories left behind: %v", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWorkspaceBadRequests(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	for _, dir := range []string{"relative/repo", "/", "/no/such/parent/repo", "/tmp/../etc"} {
		_, err := c.PrepareWorkspace(context.Background(), workspace.ApplyRequest{Dir: dir, Plan: workspace.GuestPlan{Version: workspace.PlanVersion, Mode: workspace.ModeFullCopy}},
			agentclient.WorkspaceStreams{}, nil)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeInvalid {
			t.Errorf("dir %q: err = %v", dir, err)
		}
	}
	_, err := c.PrepareWorkspace(context.Background(), workspace.ApplyRequest{Dir: filepath.Join(t.TempDir(), "r"), Plan: workspace.GuestPlan{Version: 99}},
		agentclient.WorkspaceStreams{}, nil)
	if err == nil || !strings.Contains(err.Error(), "plan version") {
		t.Errorf("bad plan version: err = %v", err)
	}
}
