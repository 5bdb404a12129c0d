package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const oldOpencodeUnit = "[Service]\nEnvironment=HOME=/root\nExecStart=/usr/local/bin/opencode serve --hostname 0.0.0.0 --port 4096\n"

// An image built before per-VM passwords: init gives its opencode unit
// the seed's EnvironmentFile through a runtime drop-in and reloads
// systemd, so opencode never starts without the password.
func TestInitSecuresOldOpencodeUnit(t *testing.T) {
	e := newInitEnv(t, map[string]any{"hostname": "dev"}, "")
	os.MkdirAll(filepath.Join(e.root, "etc/systemd/system"), 0o755)
	os.WriteFile(filepath.Join(e.root, opencodeUnit), []byte(oldOpencodeUnit), 0o644)
	env := filepath.Join(filepath.Dir(e.seed), OpencodeEnvName)
	os.WriteFile(env, []byte("OPENCODE_SERVER_PASSWORD=pw\n"), 0o600)
	reloads := 0
	e.opts.ReloadSystemd = func() error { reloads++; return nil }
	if err := Init(e.opts); err != nil {
		t.Fatal(err)
	}
	got, mode := e.read(t, opencodeDropIn)
	if !strings.Contains(got, "[Service]\nEnvironmentFile="+env+"\n") || mode != 0o644 {
		t.Fatalf("drop-in %o %q", mode, got)
	}
	if strings.Contains(got, "OPENCODE_SERVER_PASSWORD") {
		t.Fatalf("drop-in holds the password itself: %q", got)
	}
	if reloads != 1 {
		t.Fatalf("systemd reloaded %d times, want 1", reloads)
	}
}

// A current image's unit names the file itself: no drop-in, no reload
// (a reload costs boot time).
func TestInitLeavesCurrentOpencodeUnit(t *testing.T) {
	e := newInitEnv(t, map[string]any{"hostname": "dev"}, "")
	env := filepath.Join(filepath.Dir(e.seed), OpencodeEnvName)
	os.WriteFile(env, []byte("OPENCODE_SERVER_PASSWORD=pw\n"), 0o600)
	os.MkdirAll(filepath.Join(e.root, "etc/systemd/system"), 0o755)
	os.WriteFile(filepath.Join(e.root, opencodeUnit), []byte("[Service]\nEnvironmentFile="+env+"\n"), 0o644)
	e.opts.ReloadSystemd = func() error { t.Fatal("reload for a current unit"); return nil }
	if err := Init(e.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.root, opencodeDropIn)); !os.IsNotExist(err) {
		t.Fatalf("drop-in written for a current unit: %v", err)
	}
	// No opencode in the image, or no password in the seed: nothing to do.
	for _, setup := range []func(){
		func() { os.Remove(filepath.Join(e.root, opencodeUnit)) },
		func() {
			os.WriteFile(filepath.Join(e.root, opencodeUnit), []byte(oldOpencodeUnit), 0o644)
			os.Remove(env)
		},
	} {
		setup()
		if err := Init(e.opts); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(e.root, opencodeDropIn)); !os.IsNotExist(err) {
			t.Fatalf("drop-in written: %v", err)
		}
	}
}
