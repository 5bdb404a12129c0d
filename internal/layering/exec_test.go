package layering

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// execAllowed lists the module-relative directories whose non-test code
// may start processes: the shell-out layer, the terminal handoff to ssh
// (CLI, TUI), the VMM drivers and the guest agent. Each ends in "/" so
// that internal/agent does not also admit internal/agentclient.
var execAllowed = []string{
	"internal/system/",
	"internal/cli/",
	"internal/tui/",
	"internal/vmm/",
	"internal/agent/",
	"cmd/",
}

// processStarters are the calls that start or replace a process without
// os/exec; importing their package is fine, calling them is not.
var processStarters = map[string][]string{
	"os":                    {"StartProcess"},
	"syscall":               {"Exec", "ForkExec", "StartProcess"},
	"golang.org/x/sys/unix": {"Exec"},
}

func TestLayeringExec(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	violations, err := execViolations(root, execAllowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range violations {
		t.Errorf("%s; only %s may start processes, everything else takes a system.Runner", v, strings.Join(execAllowed, ", "))
	}
}

func TestLayeringExecDetectsViolations(t *testing.T) {
	files := map[string]string{
		"go.mod":                        "module example.com/m\n",
		"internal/system/run.go":        "package system\nimport \"os/exec\"\nvar _ = exec.Command\n",
		"internal/vmm/qemu/qemu.go":     "package qemu\nimport \"os/exec\"\nvar _ = exec.Command\n",
		"cmd/banger/main.go":            "package main\nimport \"os/exec\"\nvar _ = exec.Command\n",
		"internal/store/store_test.go":  "package store\nimport \"os/exec\"\nvar _ = exec.Command\n",
		"internal/store/store.go":       "package store\nimport ex \"os/exec\"\nvar _ = ex.Command\n",
		"internal/agentclient/dial.go":  "package agentclient\nimport (\n\t\"fmt\"\n\t\"os/exec\"\n)\nvar _ = exec.Command\nvar _ = fmt.Sprint\n",
		"internal/network/tap.go":       "package network\nimport \"syscall\"\nfunc f() { syscall.Exec(\"/bin/ip\", nil, nil) }\n",
		"internal/disk/disk.go":         "package disk\nimport osx \"os\"\nfunc f() { osx.StartProcess(\"x\", nil, nil) }\n",
		"internal/disk/fine.go":         "package disk\nimport \"os\"\nfunc g() { os.Getpid() }\n",
		"internal/disk/testdata/bad.go": "package bad\nimport \"os/exec\"\n",
		"vendor/x/x.go":                 "package x\nimport \"os/exec\"\n",
		".git/hooks/x.go":               "package x\nimport \"os/exec\"\n",
		"internal/image/local_exec.go":  "package image\n// exec is a local identifier here, not os/exec.\nfunc exec() {}\nfunc f() { exec() }\n",
	}
	root := writeTree(t, files)
	got, err := execViolations(root, execAllowed)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`internal/agentclient/dial.go:4: imports "os/exec"`,
		`internal/disk/disk.go:3: calls os.StartProcess`,
		`internal/network/tap.go:3: calls syscall.Exec`,
		`internal/store/store.go:2: imports "os/exec"`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A file that does not parse is an error, not a silent pass.
	if err := os.WriteFile(filepath.Join(root, "internal/disk/broken.go"), []byte("package disk\nimport \"os/exec"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := execViolations(root, execAllowed); err == nil {
		t.Fatal("unparseable file was ignored")
	}
}

// moduleRoot walks up from the working directory to the go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// execViolations returns "path:line: what" for every non-test Go file
// under root, outside the allowed directories, that imports os/exec or
// calls one of processStarters. Paths are slash-separated and relative.
func execViolations(root string, allowed []string) ([]string, error) {
	var out []string
	err := walkGoFiles(root, func(rel, p string) error {
		if slices.ContainsFunc(allowed, func(prefix string) bool { return strings.HasPrefix(rel, prefix) }) {
			return nil
		}
		found, err := fileViolations(p)
		if err != nil {
			return err
		}
		for _, f := range found {
			out = append(out, rel+":"+f)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}

// walkGoFiles calls fn with the slash-separated relative path and the
// path of every non-test Go file of the module at root, skipping what
// the go tool skips (vendor, testdata, dot and underscore directories)
// and other modules nested inside (examples/...: their own rules).
func walkGoFiles(root string, fn func(rel, path string) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p == root {
				return nil
			}
			if name == "vendor" || name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), p)
	})
}

// writeTree writes files (slash-separated relative path -> contents)
// into a fresh directory and returns it.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func fileViolations(path string) ([]string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	var out []string
	// local import name -> import path
	banned := map[string]string{}
	for _, imp := range f.Imports {
		ip, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		line := fset.Position(imp.Pos()).Line
		if ip == "os/exec" {
			out = append(out, fmt.Sprintf("%d: imports %q", line, ip))
			continue
		}
		if _, ok := processStarters[ip]; !ok {
			continue
		}
		local := filepath.Base(ip)
		if imp.Name != nil {
			local = imp.Name.Name
		}
		banned[local] = ip
	}
	if len(banned) == 0 {
		return out, nil
	}
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		ip, ok := banned[x.Name]
		if ok && slices.Contains(processStarters[ip], sel.Sel.Name) {
			out = append(out, fmt.Sprintf("%d: calls %s.%s", fset.Position(sel.Pos()).Line, ip, sel.Sel.Name))
		}
		return true
	})
	return out, nil
}
