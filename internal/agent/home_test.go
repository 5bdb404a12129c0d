package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agentapi"
)

func TestRepairHomeMergesNestedLayout(t *testing.T) {
	root := t.TempDir()
	home := filepath.Join(root, "root")
	nested := filepath.Join(home, "root")
	os.MkdirAll(filepath.Join(nested, ".ssh"), 0o755)
	os.WriteFile(filepath.Join(nested, ".bashrc"), []byte("# old bashrc\n"), 0o644)
	os.MkdirAll(filepath.Join(nested, "repo"), 0o755)
	os.WriteFile(filepath.Join(nested, "repo", "main.go"), []byte("package main\n"), 0o644)
	// A clash: the top level wins, the nested copy is kept aside.
	os.WriteFile(filepath.Join(home, "notes.txt"), []byte("top\n"), 0o644)
	os.WriteFile(filepath.Join(nested, "notes.txt"), []byte("nested\n"), 0o644)

	changed, err := RepairHome(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nested); !os.IsNotExist(err) {
		t.Fatalf("nested /root/root still there: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(home, "repo", "main.go")); string(b) != "package main\n" {
		t.Fatalf("repo not moved up: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(home, ".bashrc")); string(b) != "# old bashrc\n" {
		t.Fatalf("bashrc: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(home, "notes.txt")); string(b) != "top\n" {
		t.Fatalf("top-level file replaced: %q", b)
	}
	aside, _ := filepath.Glob(filepath.Join(home, ".stale-root-*", "notes.txt"))
	if len(aside) != 1 {
		t.Fatalf("clashing nested file not kept aside: %v", aside)
	}
	if len(changed) == 0 || !strings.Contains(changed[0], "merged a stale /root/root") {
		t.Fatalf("changes: %q", changed)
	}
	st, _ := os.Stat(filepath.Join(home, ".ssh"))
	if st.Mode().Perm() != 0o700 {
		t.Fatalf(".ssh mode %v", st.Mode().Perm())
	}

	// A second run changes nothing.
	changed, err = RepairHome(root)
	if err != nil || len(changed) != 0 {
		t.Fatalf("second repair: %q %v", changed, err)
	}
}

func TestRepairHomeLeavesUnrelatedRootDir(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "root", "root", "data"), 0o755)
	if _, err := RepairHome(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "root", "root", "data")); err != nil {
		t.Fatalf("a user's /root/root without a home skeleton was touched: %v", err)
	}
}

func TestRepairHomeKeepsDotfilesSane(t *testing.T) {
	root := t.TempDir()
	home := filepath.Join(root, "root")
	os.MkdirAll(home, 0o777)
	os.Chmod(home, 0o777)
	os.MkdirAll(filepath.Join(root, "usr/share/base-files"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/share/base-files/dot.bashrc"), []byte("# debian root bashrc\n"), 0o644)
	os.WriteFile(filepath.Join(home, ".bashrc"), nil, 0o644)                   // empty
	os.Symlink("/nonexistent/profile", filepath.Join(home, ".profile"))        // dangling
	os.WriteFile(filepath.Join(home, ".ssh"), []byte("not a dir"), 0o644)      // a file
	os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[user]\n"), 0o600) // untouched

	changed, err := RepairHome(root)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(home, ".bashrc")); string(b) != "# debian root bashrc\n" {
		t.Fatalf("bashrc not restored: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(home, ".profile")); !strings.Contains(string(b), ".bashrc") {
		t.Fatalf("profile not restored: %q", b)
	}
	if st, err := os.Lstat(filepath.Join(home, ".ssh")); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf(".ssh: %v %v", st, err)
	}
	if st, _ := os.Stat(home); st.Mode().Perm() != 0o700 {
		t.Fatalf("/root mode %v", st.Mode().Perm())
	}
	if b, _ := os.ReadFile(filepath.Join(home, ".gitconfig")); string(b) != "[user]\n" {
		t.Fatalf("gitconfig touched: %q", b)
	}
	if len(changed) != 3 {
		t.Fatalf("changes: %q", changed)
	}
}

func TestWriteAuthFiles(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "root"), 0o700)
	// An existing file with a loose mode is replaced, and ends up 0600.
	os.WriteFile(filepath.Join(root, "root", ".claude.json"), []byte("old"), 0o644)
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	secret := "sk-ant-SECRET-TOKEN"
	err := writeAuthFiles(root, []agentapi.SeedFile{
		{Path: ".local/share/opencode/auth.json", Data: []byte(`{"k":"` + secret + `"}`)},
		{Path: ".claude.json", Data: []byte(secret)},
		{Path: "../etc/passwd", Data: []byte(secret)},
		{Path: "/etc/shadow", Data: []byte(secret)},
	}, log)
	if err == nil || !strings.Contains(err.Error(), "../etc/passwd") || !strings.Contains(err.Error(), "/etc/shadow") {
		t.Fatalf("escaping paths not refused: %v", err)
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(logBuf.String(), secret) {
		t.Fatalf("secret leaked: %v / %s", err, logBuf.String())
	}
	for _, p := range []string{".local/share/opencode/auth.json", ".claude.json"} {
		st, err := os.Stat(filepath.Join(root, "root", p))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", p, st, err)
		}
	}
	if st, _ := os.Stat(filepath.Join(root, "root", ".local")); st.Mode().Perm() != 0o700 {
		t.Fatalf("new parent dir mode %v", st.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(root, "etc/passwd")); err == nil {
		t.Fatal("wrote outside /root")
	}
	if !strings.Contains(logBuf.String(), ".claude.json") {
		t.Fatalf("log does not name the files: %s", logBuf.String())
	}
}

func TestWriteAuthFilesRefusesSymlinkEscape(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(root, "root"), 0o700)
	os.Symlink(outside, filepath.Join(root, "root", ".pi"))
	err := writeAuthFiles(root, []agentapi.SeedFile{{Path: ".pi/agent/auth.json", Data: []byte("x")}}, slog.Default())
	if err == nil {
		t.Fatal("a symlink out of /root was followed")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("wrote through the symlink: %v", entries)
	}
}

func TestInitWritesAuthFiles(t *testing.T) {
	e := newInitEnv(t, agentapi.SeedConfig{Hostname: "vm1", AuthFiles: []agentapi.SeedFile{{Path: ".pi/agent/auth.json", Data: []byte("{}")}}}, "")
	_ = Init(e.opts)
	st, err := os.Stat(filepath.Join(e.root, "root/.pi/agent/auth.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("auth file: %v %v", st, err)
	}
}
