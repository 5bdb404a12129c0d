package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run drives the real command tree against a socket where no daemon
// listens, which is what most argument handling needs.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("BANGER_HOME", t.TempDir())
	var out, errb bytes.Buffer
	g := &globals{stdout: &out, stderr: &errb, stdin: strings.NewReader("")}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	code := exitCode(g, root.Execute())
	return code, out.String(), errb.String()
}

func TestExitCodesAndErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"vm", "list"}, ExitError, "no banger daemon is answering"},
		{[]string{"vm", "create", "--cpus", "x"}, ExitUsage, "invalid argument"},
		{[]string{"vm", "show"}, ExitUsage, "accepts 1 arg"},
		{[]string{"vm", "exec", "a"}, ExitUsage, "usage: banger vm exec"},
		{[]string{"vm", "exec", "a", "--"}, ExitUsage, "usage: banger vm exec"},
		{[]string{"vm", "exec", "a", "--", "true"}, ExitBanger, "no banger daemon"},
		{[]string{"op", "watch", "x"}, ExitError, "start one with `banger daemon`"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: got %d %q, want %d %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestJSONErrors(t *testing.T) {
	code, _, stderr := run(t, "vm", "list", "--json")
	var body struct {
		Error struct{ Message, Hint string }
	}
	if code != ExitError || json.Unmarshal([]byte(stderr), &body) != nil || body.Error.Message == "" || body.Error.Hint == "" {
		t.Fatalf("got %d %q", code, stderr)
	}
}

func TestStripDashes(t *testing.T) {
	for in, want := range map[string]string{"-- a b": "a b", "a -- b": "a -- b", "--": "", "": ""} {
		got := strings.Join(stripDashes(strings.Fields(in)), " ")
		if got != want {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
}

func TestSocketFromHome(t *testing.T) {
	home := t.TempDir()
	t.Setenv("BANGER_HOME", home)
	t.Setenv("BANGER_SOCKET", "")
	g := &globals{}
	if got := g.client().Socket(); got != filepath.Join(home, "banger.sock") {
		t.Fatalf("socket %s", got)
	}
}

func TestReadProvisionScript(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	if s, err := readProvisionScript(write("ok.sh", "apt-get install -y htop\n")); err != nil || s != "apt-get install -y htop\n" {
		t.Fatalf("good script: %q %v", s, err)
	}
	for path, want := range map[string]string{
		write("empty.sh", " \n\t\n"):     "is empty",
		write("bin.sh", "ELF\x00\x01"):   "is not text",
		filepath.Join(dir, "missing.sh"): "no such file",
	} {
		if _, err := readProvisionScript(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", filepath.Base(path), err, want)
		}
	}
}
