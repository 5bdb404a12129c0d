package layering

import (
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// importRule forbids the packages under from (a module-relative
// directory; "internal/cli" covers internal/cli and its subpackages) to
// reach the packages under deny, directly or through any chain of the
// module's own packages. Files named in exceptFiles (module-relative)
// are the sanctioned places that may import deny directly; what they
// import does not count against the rest of their package.
type importRule struct {
	from, deny  string
	exceptFiles []string
	why         string
}

// importRules is the layering the code keeps.
var importRules = []importRule{
	{from: "internal/cli", deny: "internal/daemon", why: "the CLI is a client of the daemon's API; `banger daemon` is wired in cmd/banger"},
	{from: "internal/tui", deny: "internal/daemon", why: "the TUI is a client of the daemon's API"},
	{from: "internal/cli", deny: "internal/store", why: "the CLI sees the daemon's state through the API only"},
	{from: "internal/tui", deny: "internal/store", why: "the TUI sees the daemon's state through the API only"},
	{from: "api", deny: "internal", why: "api is the public wire format: what other modules import must not drag internals along"},
	{from: "internal/agent", deny: "internal/daemon", why: "the guest agent runs inside the VM and knows nothing of the host daemon"},
	{from: "internal/agent", deny: "internal/store", why: "the guest agent runs inside the VM and knows nothing of the host's state"},
	{from: "internal/vmm", deny: "internal/daemon", why: "drivers are below the daemon; the daemon calls them, never the other way"},
	{from: "internal/daemon", deny: "internal/vmm/qemu", exceptFiles: []string{"internal/daemon/drivers.go"}, why: "the daemon asks a vmm.Driver; drivers.go alone registers them"},
	{from: "internal/daemon", deny: "internal/vmm/firecracker", exceptFiles: []string{"internal/daemon/drivers.go"}, why: "the daemon asks a vmm.Driver; drivers.go alone registers them"},
	{from: "internal/store", deny: "internal/daemon", why: "the store is below the engines"},
	{from: "internal/daemon", deny: "internal/daemon/httpapi", exceptFiles: []string{"internal/daemon/backend.go"}, why: "engines never import the HTTP layer; backend.go hands them to it"},
	{from: "internal/daemon/httpapi", deny: "internal/store", why: "the HTTP layer reaches engines through its Backend interfaces, never their state"},
	{from: "internal/daemon/httpapi", deny: "internal/vmm", why: "the HTTP layer reaches engines through its Backend interfaces, never a VMM"},
	{from: "internal/daemon/httpapi", deny: "internal/agentclient", why: "the HTTP layer reaches engines through its Backend interfaces, never a guest agent"},
}

func TestLayeringImports(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	g, err := loadImports(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range g.violations(importRules) {
		t.Error(v)
	}
}

func TestLayeringImportsDetectsViolations(t *testing.T) {
	files := map[string]string{
		"go.mod":                         "module example.com/m\n",
		"cmd/m/main.go":                  "package main\nimport _ \"example.com/m/internal/daemon\"\n",
		"internal/daemon/d.go":           "package daemon\nimport _ \"example.com/m/internal/store\"\n",
		"internal/daemon/serve.go":       "package daemon\nimport _ \"example.com/m/internal/daemon/httpapi\"\n",
		"internal/daemon/vm.go":          "package daemon\nimport _ \"fmt\"\n",
		"internal/daemon/httpapi/h.go":   "package httpapi\nimport _ \"example.com/m/api\"\n",
		"internal/daemon/images/i.go":    "package images\nimport _ \"example.com/m/internal/daemon/httpapi\"\n",
		"internal/store/s.go":            "package store\n",
		"internal/cli/ok.go":             "package cli\nimport _ \"example.com/m/api\"\n",
		"internal/cli/bad.go":            "package cli\nimport _ \"example.com/m/internal/util\"\n",
		"internal/cli/bad_test.go":       "package cli\nimport _ \"example.com/m/internal/daemon\"\n",
		"internal/util/u.go":             "package util\nimport _ \"example.com/m/internal/daemon/images\"\n",
		"internal/cli/testdata/x/x.go":   "package x\nimport _ \"example.com/m/internal/daemon\"\n",
		"api/a.go":                       "package api\nimport _ \"strings\"\n",
		"examples/other/go.mod":          "module example.com/other\n",
		"examples/other/main.go":         "package main\nimport _ \"example.com/m/internal/daemon\"\n",
		"internal/daemon/cycle/cycle.go": "package cycle\nimport _ \"example.com/m/internal/daemon/cycle\"\n",
	}
	root := writeTree(t, files)
	g, err := loadImports(root)
	if err != nil {
		t.Fatal(err)
	}
	rules := []importRule{
		{from: "internal/cli", deny: "internal/daemon", why: "cli is a client"},
		{from: "internal/daemon", deny: "internal/daemon/httpapi", exceptFiles: []string{"internal/daemon/serve.go"}, why: "engines never import the HTTP layer"},
		{from: "api", deny: "internal", why: "public"},
	}
	got := g.violations(rules)
	want := []string{
		`internal/cli reaches internal/daemon/images (internal/cli -> internal/util -> internal/daemon/images): cli is a client`,
		`internal/daemon/images reaches internal/daemon/httpapi (internal/daemon/images -> internal/daemon/httpapi): engines never import the HTTP layer`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The sanctioned file stops being an exception as soon as a second
	// file of its package imports the HTTP layer.
	if err := os.WriteFile(filepath.Join(root, "internal/daemon/vm.go"), []byte("package daemon\nimport _ \"example.com/m/internal/daemon/httpapi\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if g, err = loadImports(root); err != nil {
		t.Fatal(err)
	}
	got = g.violations(rules)
	if len(got) != 3 || !slices.ContainsFunc(got, func(v string) bool { return strings.HasPrefix(v, "internal/daemon reaches internal/daemon/httpapi") }) {
		t.Fatalf("a second importer was not reported:\n%s", strings.Join(got, "\n"))
	}

	// A file that does not parse is an error, not a silent pass.
	if err := os.WriteFile(filepath.Join(root, "internal/cli/broken.go"), []byte("package cli\nimport \"os"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadImports(root); err == nil {
		t.Fatal("unparseable file was ignored")
	}
}

// importGraph maps each of the module's package directories
// (module-relative, slash-separated) to the files in it and the module
// packages each file imports.
type importGraph struct {
	module string
	// files[pkg][file] = module packages imported by that file.
	files map[string]map[string][]string
}

func loadImports(root string) (*importGraph, error) {
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	var module string
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			module = f[1]
		}
	}
	if module == "" {
		return nil, fmt.Errorf("no module line in %s/go.mod", root)
	}
	g := &importGraph{module: module, files: map[string]map[string][]string{}}
	err = walkGoFiles(root, func(rel, p string) error {
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return fmt.Errorf("parse %s: %w", rel, err)
		}
		pkg := path.Dir(rel)
		if g.files[pkg] == nil {
			g.files[pkg] = map[string][]string{}
		}
		imports := []string{}
		for _, imp := range f.Imports {
			ip, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return fmt.Errorf("parse %s: %w", rel, err)
			}
			if ip == module {
				imports = append(imports, ".")
			} else if r, ok := strings.CutPrefix(ip, module+"/"); ok {
				imports = append(imports, r)
			}
		}
		g.files[pkg][rel] = imports
		return nil
	})
	if err != nil {
		return nil, err
	}
	return g, nil
}

func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// violations returns one line per package under a rule's from that
// reaches a package under its deny, with the shortest chain that does.
func (g *importGraph) violations(rules []importRule) []string {
	var out []string
	for _, r := range rules {
		for pkg := range g.files {
			if !under(pkg, r.from) || under(pkg, r.deny) && !under(r.from, r.deny) {
				continue
			}
			if chain := g.reach(pkg, r); chain != nil {
				out = append(out, fmt.Sprintf("%s reaches %s (%s): %s", pkg, chain[len(chain)-1], strings.Join(chain, " -> "), r.why))
			}
		}
	}
	slices.Sort(out)
	return out
}

// reach does a breadth-first walk of pkg's imports and returns the first
// chain that ends under r.deny, or nil. A package's own files named in
// r.exceptFiles are skipped when they import deny directly.
func (g *importGraph) reach(pkg string, r importRule) []string {
	prev := map[string]string{pkg: ""}
	queue := []string{pkg}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		files := make([]string, 0, len(g.files[cur]))
		for f := range g.files[cur] {
			files = append(files, f)
		}
		slices.Sort(files)
		for _, f := range files {
			for _, imp := range g.files[cur][f] {
				if _, seen := prev[imp]; seen {
					continue
				}
				if under(imp, r.deny) {
					if slices.Contains(r.exceptFiles, f) {
						continue
					}
					chain := []string{imp}
					for p := cur; p != ""; p = prev[p] {
						chain = append([]string{p}, chain...)
					}
					return chain
				}
				prev[imp] = cur
				queue = append(queue, imp)
			}
		}
	}
	return nil
}
