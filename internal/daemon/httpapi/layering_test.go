package httpapi

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/bangerdev/banger/"

// imports lists the imports of the non-test Go files in dir, by file.
func imports(t *testing.T, dir string) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			out[filepath.Base(f)] = append(out[filepath.Base(f)], p)
		}
	}
	return out
}

// TestLayering holds the shape of the daemon: the HTTP layer knows only
// the wire types and its JSON helpers, and of the daemon's files only the
// one that wires engines to handlers (backend.go) knows the HTTP layer.
func TestLayering(t *testing.T) {
	allowed := map[string]bool{module + "api": true, module + "internal/httpjson": true, module + "internal/doctor": true}
	for file, imps := range imports(t, ".") {
		for _, p := range imps {
			if strings.HasPrefix(p, module) && !allowed[p] {
				t.Errorf("httpapi/%s imports %s: handlers reach engines only through the Backend interfaces", file, p)
			}
		}
	}
	for file, imps := range imports(t, "..") {
		for _, p := range imps {
			if p == module+"internal/daemon/httpapi" && file != "backend.go" {
				t.Errorf("daemon/%s imports the HTTP layer: engines must not; wire them in backend.go", file)
			}
		}
	}
}
