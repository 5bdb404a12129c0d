package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/system"
)

// fakeNPM plays `npm install --global --prefix P pkgs...`: it lays out
// what npm would (package.json per package, bin links) so InstallAgents
// is tested without the registry.
func fakeNPM(ctx context.Context, call system.FakeCall) ([]byte, error) {
	argv := call.Argv
	if len(argv) > 1 && argv[1] == "rebuild" {
		return nil, nil
	}
	prefix := ""
	var pkgs []string
	for i := 1; i < len(argv); i++ {
		switch {
		case argv[i] == "--prefix":
			prefix = argv[i+1]
			i++
		case argv[i] == "--globalconfig":
			i++
		case strings.HasPrefix(argv[i], "-") || argv[i] == "install":
		default:
			pkgs = append(pkgs, argv[i])
		}
	}
	for _, p := range pkgs {
		name := npmName(p)
		dir := filepath.Join(prefix, "lib/node_modules", name)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"version":"`+p[len(name)+1:]+`"}`), 0o644)
	}
	os.MkdirAll(filepath.Join(prefix, "bin"), 0o755)
	for _, b := range []string{"node", "opencode", "claude", "pi"} {
		os.Symlink("../lib/node_modules/x/"+b, filepath.Join(prefix, "bin", b))
		os.MkdirAll(filepath.Join(prefix, "lib/node_modules/x"), 0o755)
		os.WriteFile(filepath.Join(prefix, "lib/node_modules/x", b), []byte("\x7fELF fake"), 0o755)
	}
	return nil, nil
}

func TestInstallAgents(t *testing.T) {
	root := t.TempDir()
	f := &system.Fake{Handler: fakeNPM}
	var log bytes.Buffer
	got, err := InstallAgents(context.Background(), f, &log, root, AgentNPMPackages)
	if err != nil {
		t.Fatal(err)
	}
	if got["opencode-ai"] != "1.18.33" || got["@anthropic-ai/claude-code"] == "" || len(got) != len(AgentNPMPackages) {
		t.Fatalf("versions %v", got)
	}
	cmds := f.Commands()
	if len(cmds) != 2 || !strings.Contains(cmds[0], "--prefix "+filepath.Join(root, "usr/local")) || !strings.Contains(cmds[0], "--ignore-scripts") ||
		!strings.Contains(cmds[0], "--globalconfig /dev/null") || !strings.Contains(cmds[1], "--globalconfig /dev/null") ||
		!strings.HasPrefix(cmds[1], "npm rebuild --global --prefix "+filepath.Join(root, "usr/local")) || !strings.HasSuffix(cmds[1], "opencode-ai @anthropic-ai/claude-code") {
		t.Fatalf("npm commands: %v", cmds)
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/opencode.service"))
	if err != nil || !strings.Contains(string(unit), "--port 4096") {
		t.Fatalf("unit: %s %v", unit, err)
	}
	// opencode serves only with the VM's password, read from the seed
	// disk (the file the daemon writes and banger-agent init checks for),
	// never from its command line.
	if !strings.Contains(string(unit), "\nEnvironmentFile=/run/banger/seed/opencode.env\n") ||
		strings.Contains(string(unit), "EnvironmentFile=-") || strings.Contains(string(unit), "--password") {
		t.Fatalf("unit does not require the seed's password file:\n%s", unit)
	}
	if l, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/opencode.service")); err != nil || l != "/etc/systemd/system/opencode.service" {
		t.Fatalf("not enabled: %q %v", l, err)
	}

	// A placeholder script where a native binary belongs is an error.
	root3 := t.TempDir()
	f3 := &system.Fake{Handler: func(ctx context.Context, c system.FakeCall) ([]byte, error) {
		if c.Argv[1] != "install" {
			return nil, nil
		}
		fakeNPM(ctx, c)
		return nil, os.WriteFile(filepath.Join(root3, "usr/local/lib/node_modules/x/claude"), []byte("#!/bin/sh\necho not installed\n"), 0o755)
	}}
	if _, err := InstallAgents(context.Background(), f3, &log, root3, AgentNPMPackages); err == nil || !strings.Contains(err.Error(), "not a native executable") {
		t.Fatalf("placeholder claude: %v", err)
	}

	// A missing command after npm is an error, not a silent bad image.
	root2 := t.TempDir()
	f2 := &system.Fake{Handler: func(ctx context.Context, c system.FakeCall) ([]byte, error) {
		if c.Argv[1] != "install" {
			return nil, nil
		}
		fakeNPM(ctx, c)
		return nil, os.Remove(filepath.Join(root2, "usr/local/bin/pi"))
	}}
	if _, err := InstallAgents(context.Background(), f2, &log, root2, AgentNPMPackages); err == nil || !strings.Contains(err.Error(), "pi missing") {
		t.Fatalf("missing pi: %v", err)
	}
}
