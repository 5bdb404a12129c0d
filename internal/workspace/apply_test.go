package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/escapetest"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/tarx"
)

type tarEntry struct {
	name, link, body string
	typ              byte
	// mode defaults to 0644.
	mode int64
}

func makeTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	data, err := buildTar(entries...)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func buildTar(entries ...tarEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: mode, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// preparedStreams prepares a small repository and returns its plan and
// bundle, for tests that swap in a hostile overlay or plan.
// hostStreams are the bundle-mode streams besides the overlay.
type hostStreams struct{ bundle, idx, entries []byte }

// with returns the streams ApplyPlan takes, with overlay as the tar.
func (h hostStreams) with(overlay []byte) Streams {
	return Streams{Bundle: bytes.NewReader(h.bundle), PackIndex: bytes.NewReader(h.idx),
		Overlay: bytes.NewReader(overlay), Entries: bytes.NewReader(h.entries)}
}

// hostStreamsOf writes a workspace's bundle, pack index and entries.
func hostStreamsOf(t *testing.T, ws *Workspace) hostStreams {
	t.Helper()
	ctx := context.Background()
	var bundle, idx, entries bytes.Buffer
	must(t, ws.WriteBundle(ctx, &bundle))
	must(t, ws.WritePackIndex(ctx, bytes.NewReader(bundle.Bytes()), &idx))
	must(t, ws.WriteEntries(ctx, &entries))
	return hostStreams{bundle.Bytes(), idx.Bytes(), entries.Bytes()}
}

func preparedStreams(t *testing.T, setup ...func(dir string)) (GuestPlan, hostStreams) {
	t.Helper()
	dir := newRepo(t)
	for _, s := range setup {
		s(dir)
	}
	ctx := context.Background()
	repo, err := Resolve(ctx, system.Exec{}, dir)
	must(t, err)
	ws, err := Prepare(ctx, system.Exec{}, repo, Options{})
	must(t, err)
	defer ws.Close()
	return ws.Plan, hostStreamsOf(t, ws)
}

// TestApplyPlanRefusesEscapes feeds ApplyPlan overlays that try to write
// outside the target, into .git, or through a symlink of the stream, and
// plans with hostile paths. Nothing may appear outside the target.
func TestApplyPlanRefusesEscapes(t *testing.T) {
	t.Parallel()
	plan, bundle := preparedStreams(t)
	tests := []struct {
		name    string
		overlay []tarEntry
		mutate  func(p *GuestPlan)
		wantErr error
	}{
		{name: "dot dot", overlay: []tarEntry{{name: "../escaped", typ: tar.TypeReg, body: "x"}}, wantErr: tarx.ErrUnsafePath},
		{name: "nested dot dot", overlay: []tarEntry{{name: "a/../../escaped", typ: tar.TypeReg, body: "x"}}, wantErr: tarx.ErrUnsafePath},
		{name: "absolute", overlay: []tarEntry{{name: "/tmp/escaped", typ: tar.TypeReg, body: "x"}}, wantErr: tarx.ErrUnsafePath},
		{name: "through symlink out", overlay: []tarEntry{
			{name: "out", typ: tar.TypeSymlink, link: ".."},
			{name: "out/escaped", typ: tar.TypeReg, body: "x"},
		}, wantErr: tarx.ErrUnsafePath},
		{name: "through symlink in", overlay: []tarEntry{
			{name: "src-link", typ: tar.TypeSymlink, link: "src"},
			{name: "src-link/main.go", typ: tar.TypeReg, body: "x"},
		}, wantErr: tarx.ErrUnsafePath},
		{name: "directory over symlink", overlay: []tarEntry{
			{name: "d", typ: tar.TypeSymlink, link: "/"},
			{name: "d", typ: tar.TypeDir},
		}, wantErr: tarx.ErrUnsafePath},
		{name: "git hook", overlay: []tarEntry{{name: ".git/hooks/post-checkout", typ: tar.TypeReg, body: "#!/bin/sh\n"}}, wantErr: tarx.ErrUnsafePath},
		{name: "git case folded", overlay: []tarEntry{{name: "sub/.GIT/config", typ: tar.TypeReg, body: "x"}}, wantErr: tarx.ErrUnsafePath},
		{name: "hard link", overlay: []tarEntry{{name: "hl", typ: tar.TypeLink, link: "/etc/passwd"}}, wantErr: tarx.ErrUnsupported},
		{name: "device", overlay: []tarEntry{{name: "dev", typ: tar.TypeChar}}, wantErr: tarx.ErrUnsupported},
		{name: "deleted path escapes", mutate: func(p *GuestPlan) { p.Deleted = PathList{"../victim"} }, wantErr: tarx.ErrUnsafePath},
		{name: "deleted path in .git", mutate: func(p *GuestPlan) { p.Deleted = PathList{".git/HEAD"} }, wantErr: tarx.ErrUnsafePath},
		{name: "skip-worktree path escapes", mutate: func(p *GuestPlan) { p.SkipWorktree = PathList{"/etc/passwd"} }, wantErr: tarx.ErrUnsafePath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			base := t.TempDir()
			victim := filepath.Join(base, "victim")
			writeFile(t, victim, "keep me\n", 0o644)
			dir := filepath.Join(base, "work", "repo")
			p := plan
			if tt.mutate != nil {
				tt.mutate(&p)
			}
			overlay := makeTar(t, tt.overlay...)
			err := ApplyPlan(context.Background(), system.Exec{}, dir, p, bundle.with(overlay), nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got, err := os.ReadFile(victim); err != nil || string(got) != "keep me\n" {
				t.Fatalf("victim = %q, %v", got, err)
			}
			// Plan errors stop before the target is created.
			if _, err := os.Stat(filepath.Join(base, "work")); err == nil {
				assertOnly(t, base, "victim", "work")
				assertOnly(t, filepath.Join(base, "work"), "repo")
			} else {
				assertOnly(t, base, "victim")
			}
			if _, err := os.Stat(filepath.Join(dir, ".git/hooks/post-checkout")); err == nil {
				t.Fatal("a hook was planted")
			}
		})
	}
}

// assertOnly checks dir holds exactly the given names.
func assertOnly(t testing.TB, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

func TestApplyPlanNeedsEmptyDir(t *testing.T) {
	t.Parallel()
	plan, bundle := preparedStreams(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "existing"), "x", 0o644)
	err := ApplyPlan(context.Background(), system.Exec{}, dir, plan, bundle.with(makeTar(t)), nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Message, "not empty") {
		t.Fatalf("err = %v", err)
	}
}

// TestApplyPlanDetectsMismatch: a plan and a bundle from different
// prepares must not be combined silently.
func TestApplyPlanDetectsMismatch(t *testing.T) {
	t.Parallel()
	plan, _ := preparedStreams(t)
	_, otherBundle := preparedStreams(t, func(dir string) {
		git(t, dir, "commit", "-q", "--allow-empty", "-m", "different history")
	})
	err := ApplyPlan(context.Background(), system.Exec{}, filepath.Join(t.TempDir(), "repo"), plan,
		otherBundle.with(makeTar(t)), nil)
	if err == nil || !strings.Contains(err.Error(), "bundle and plan disagree") {
		t.Fatalf("err = %v", err)
	}
}

func TestCheckEntry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		typ      byte
		links    []string
		allowGit bool
		want     string
		wantErr  error
	}{
		{name: "a/b.txt", typ: tar.TypeReg, want: "a/b.txt"},
		{name: "./a//b.txt", typ: tar.TypeReg, want: "a/b.txt"},
		{name: "dir/", typ: tar.TypeDir, want: "dir"},
		{name: "name with space\nand newline", typ: tar.TypeReg, want: "name with space\nand newline"},
		{name: "..file", typ: tar.TypeReg, want: "..file"},
		{name: ".gitignore", typ: tar.TypeReg, want: ".gitignore"},
		{name: "a/.github/x", typ: tar.TypeReg, want: "a/.github/x"},
		{name: "../x", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: "a/../../x", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: "/x", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: "", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: "a\x00b", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: ".", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: ".git/config", typ: tar.TypeReg, wantErr: tarx.ErrUnsafePath},
		{name: "a/.Git", typ: tar.TypeSymlink, wantErr: tarx.ErrUnsafePath},
		{name: ".git/config", typ: tar.TypeReg, allowGit: true, want: ".git/config"},
		{name: ".", typ: tar.TypeDir, allowGit: true, want: "."},
		{name: ".", typ: tar.TypeReg, allowGit: true, wantErr: tarx.ErrUnsafePath},
		{name: "l/x", typ: tar.TypeReg, links: []string{"l"}, wantErr: tarx.ErrUnsafePath},
		{name: "l/deep/x", typ: tar.TypeReg, links: []string{"l"}, wantErr: tarx.ErrUnsafePath},
		{name: "l", typ: tar.TypeReg, links: []string{"l"}, want: "l"},
		{name: "l", typ: tar.TypeDir, links: []string{"l"}, wantErr: tarx.ErrUnsafePath},
		{name: "lx/y", typ: tar.TypeReg, links: []string{"l"}, want: "lx/y"},
		{name: "fifo", typ: tar.TypeFifo, wantErr: tarx.ErrUnsupported},
	}
	for _, tt := range tests {
		links := map[string]bool{}
		for _, l := range tt.links {
			links[l] = true
		}
		got, err := checkEntry(tt.name, tt.typ, links, tt.allowGit)
		if !errors.Is(err, tt.wantErr) || got != tt.want {
			t.Errorf("checkEntry(%q, %q, %v, %v) = %q, %v; want %q, %v", tt.name, tt.typ, tt.links, tt.allowGit, got, err, tt.want, tt.wantErr)
		}
	}
	// A symlink entry is remembered.
	links := map[string]bool{}
	if _, err := checkEntry("a/l", tar.TypeSymlink, links, false); err != nil || !links["a/l"] {
		t.Fatalf("symlink not recorded: %v %v", err, links)
	}
}

// FuzzCheckEntry: whatever it accepts stays inside the directory, avoids
// .git in bundle mode and is not below a symlink seen before.
func FuzzCheckEntry(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "/abs", ".git/x", "l/x", "a/./b/../c", "x/.GIT", "", ".", "a//b/", "\x00"} {
		f.Add(s, byte(tar.TypeReg), "l", false)
		f.Add(s, byte(tar.TypeSymlink), "a", true)
	}
	f.Fuzz(func(t *testing.T, name string, typ byte, link string, allowGit bool) {
		links := map[string]bool{link: true}
		got, err := checkEntry(name, typ, links, allowGit)
		if err != nil {
			if got != "" {
				t.Fatalf("error with a name: %q", got)
			}
			return
		}
		if got == "." {
			if typ != tar.TypeDir || !allowGit {
				t.Fatalf("accepted %q as the directory itself", name)
			}
			return
		}
		if strings.HasPrefix(got, "/") || got == "" || strings.ContainsRune(got, 0) {
			t.Fatalf("accepted %q as %q", name, got)
		}
		for i, part := range strings.Split(got, "/") {
			if part == ".." || part == "." || part == "" {
				t.Fatalf("accepted %q as %q", name, got)
			}
			if !allowGit && strings.EqualFold(part, ".git") {
				t.Fatalf("accepted %q into .git", name)
			}
			if prefix := strings.Join(strings.Split(got, "/")[:i+1], "/"); prefix != got && prefix == link {
				t.Fatalf("accepted %q below the symlink %q", name, link)
			}
		}
		if filepath.IsAbs(filepath.Join("base", got)) || !strings.HasPrefix(filepath.Join("base", got), "base/") {
			t.Fatalf("%q leaves the directory", got)
		}
	})
}

// FuzzExtractOverlay extracts (with extractTree) a fuzzed symlink followed
// by a fuzzed file (and its content) into a target deep inside a fresh tree
// of decoys (escapetest), and fails when anything anywhere outside the
// target changed. Absolute link targets are re-rooted into that tree, so
// following one would be seen rather than write to the real filesystem.
func FuzzExtractOverlay(f *testing.F) {
	f.Add("l", "..", "l/x", false)
	f.Add("l", "/", "l/etc/x", false)
	f.Add("l", "/etc", "l/passwd", false)
	f.Add("a/l", "../..", "a/l/x", true)
	f.Add("l", "../../sib/deep", "l/file", false)
	f.Add("l", "../peer", "l/new", true)
	f.Add("l", "sub", "l/x", false)
	f.Add("ok", "target", "file", false)
	f.Add("l", ".", "l/.git/config", true)
	f.Fuzz(func(t *testing.T, linkName, linkTarget, fileName string, allowGit bool) {
		box := escapetest.New(t)
		must(t, os.MkdirAll(filepath.Join(box.Target, "sub"), 0o755))
		data, err := buildTar(
			tarEntry{name: linkName, link: box.Reroot(linkTarget), typ: tar.TypeSymlink},
			tarEntry{name: fileName, body: "payload", typ: tar.TypeReg},
		)
		if err != nil {
			t.Skip("archive/tar cannot encode these names")
		}
		extractTree(context.Background(), bytes.NewReader(data), box.Target, allowGit)
		box.Check(t)
	})
}

// FuzzExtractOverlayStream is FuzzExtractOverlay for a whole fuzzed tar
// stream (any entry types, any number of entries).
func FuzzExtractOverlayStream(f *testing.F) {
	seed := func(entries ...tarEntry) []byte {
		b, err := buildTar(entries...)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(tarEntry{name: "a", body: "x", typ: tar.TypeReg}), false)
	f.Add(seed(tarEntry{name: "l", link: "/etc", typ: tar.TypeSymlink}, tarEntry{name: "l/passwd", body: "x", typ: tar.TypeReg}), false)
	f.Add(seed(tarEntry{name: "d", typ: tar.TypeDir}, tarEntry{name: "d/l", link: "../../peer", typ: tar.TypeSymlink}, tarEntry{name: "d/l/f", body: "x", typ: tar.TypeReg}), true)
	f.Add(seed(tarEntry{name: "h", link: "/etc/passwd", typ: tar.TypeLink}), false)
	f.Fuzz(func(t *testing.T, data []byte, allowGit bool) {
		box := escapetest.New(t)
		in := data
		if re, ok := box.RerootTar(data); ok {
			in = re
		}
		extractTree(context.Background(), bytes.NewReader(in), box.Target, allowGit)
		box.Check(t)
	})
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		opts     Options
		wantMsg  string
		wantHint string
	}{
		{opts: Options{}},
		{opts: Options{Mode: ModeBundle, Branch: "agent/x", From: "main"}},
		{opts: Options{Mode: ModeFullCopy, Branch: "x"}},
		{opts: Options{Mode: "rsync"}, wantMsg: `unknown workspace mode "rsync"`, wantHint: "--mode full_copy"},
		{opts: Options{From: "main"}, wantMsg: "--from requires --branch", wantHint: "--branch NAME"},
		{opts: Options{Branch: "-f"}, wantMsg: "invalid branch name", wantHint: "branch"},
	}
	for _, tt := range tests {
		err := tt.opts.Validate()
		if tt.wantMsg == "" {
			if err != nil {
				t.Errorf("%+v: %v", tt.opts, err)
			}
			continue
		}
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, tt.wantMsg) || !strings.Contains(ae.Hint, tt.wantHint) {
			t.Errorf("%+v: err = %#v, want %q with hint containing %q", tt.opts, err, tt.wantMsg, tt.wantHint)
		}
	}
}

func TestGuestPlanValidate(t *testing.T) {
	t.Parallel()
	sha := strings.Repeat("a", 40)
	valid := GuestPlan{Version: PlanVersion, Mode: ModeBundle, ObjectFormat: "sha1", Head: sha, Base: sha, IndexTree: sha, Branch: "main"}
	tests := []struct {
		name   string
		mutate func(p *GuestPlan)
		ok     bool
	}{
		{name: "valid", mutate: func(*GuestPlan) {}, ok: true},
		{name: "detached", mutate: func(p *GuestPlan) { p.Branch, p.Detached = "", true }, ok: true},
		{name: "full copy needs little", mutate: func(p *GuestPlan) { *p = GuestPlan{Version: PlanVersion, Mode: ModeFullCopy} }, ok: true},
		{name: "future version", mutate: func(p *GuestPlan) { p.Version = 2 }},
		{name: "unknown mode", mutate: func(p *GuestPlan) { p.Mode = "x" }},
		{name: "bad head", mutate: func(p *GuestPlan) { p.Head = "HEAD" }},
		{name: "short tree", mutate: func(p *GuestPlan) { p.IndexTree = "abc" }},
		{name: "branch and detached", mutate: func(p *GuestPlan) { p.Detached = true }},
		{name: "option as branch", mutate: func(p *GuestPlan) { p.Branch = "--orphan" }},
		{name: "option as new branch", mutate: func(p *GuestPlan) { p.NewBranch = "-D" }},
		{name: "from without new branch", mutate: func(p *GuestPlan) { p.From = sha }},
		{name: "from not a sha", mutate: func(p *GuestPlan) { p.NewBranch, p.From = "x", "main" }},
		{name: "symref into helpers", mutate: func(p *GuestPlan) { p.Symrefs = map[string]string{"refs/banger/x": "refs/heads/main"} }},
		{name: "symref to HEAD", mutate: func(p *GuestPlan) { p.Symrefs = map[string]string{"HEAD": "refs/heads/main"} }},
		{name: "deleted escapes", mutate: func(p *GuestPlan) { p.Deleted = PathList{"a/../../b"} }},
		{name: "intent-to-add in .git", mutate: func(p *GuestPlan) { p.IntentToAdd = PathList{".git/config"} }},
		{name: "upstream newline", mutate: func(p *GuestPlan) {
			p.Upstream = &Upstream{Ref: "refs/remotes/o/m", Remote: "o", Merge: "refs/heads/m", URL: "x\n[core]"}
		}},
		{name: "unknown object format", mutate: func(p *GuestPlan) { p.ObjectFormat = "md5" }},
	}
	for _, tt := range tests {
		p := valid
		tt.mutate(&p)
		if err := p.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v", tt.name, err)
		}
	}
}

func TestPathListJSON(t *testing.T) {
	t.Parallel()
	in := PathList{"plain.txt", "ünïcödé", "new\nline", "latin1-\xe9\xff", ""}
	data, err := json.Marshal(in)
	must(t, err)
	if !bytes.Contains(data, []byte(`{"base64":`)) || !bytes.Contains(data, []byte(`"ünïcödé"`)) {
		t.Fatalf("encoding: %s", data)
	}
	var out PathList
	must(t, json.Unmarshal(data, &out))
	if !slices.Equal(in, out) {
		t.Fatalf("round trip: %q -> %s -> %q", in, data, out)
	}
	for _, bad := range []string{`[1]`, `[{"base64": "!!"}]`, `[{"other": "x"}]`, `{}`} {
		if err := json.Unmarshal([]byte(bad), &out); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}

func TestStripCredentials(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"https://user:token@github.com/o/r.git": "https://github.com/o/r.git",
		"https://ghp_token@github.com/o/r.git":  "https://github.com/o/r.git",
		"http://u:p@host/r":                     "http://host/r",
		"ssh://git:pw@host/r.git":               "ssh://git@host/r.git",
		"ssh://git@host/r.git":                  "ssh://git@host/r.git",
		"git@github.com:o/r.git":                "git@github.com:o/r.git",
		"/srv/git/r.git":                        "/srv/git/r.git",
		"https://github.com/o/r.git":            "https://github.com/o/r.git",
	}
	for in, want := range tests {
		if got := stripCredentials(in); got != want {
			t.Errorf("stripCredentials(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestGitErrors maps failures a user can fix to errors that say what to
// do, with a fake runner.
func TestGitErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name     string
		err      error
		wantMsg  string
		wantHint string
	}{
		{name: "no git", err: &system.CmdError{Argv: []string{"git"}, ExitCode: -1, Err: system.ErrNotFound},
			wantMsg: "git is not installed", wantHint: "apt-get install git"},
		{name: "dubious ownership", err: &system.CmdError{Argv: []string{"git"}, ExitCode: 128, Err: errors.New("exit status 128"),
			Output: "fatal: detected dubious ownership in repository at '/x'"},
			wantMsg: "another user owns it", wantHint: "safe.directory"},
	}
	for _, tt := range tests {
		f := &system.Fake{}
		f.On("git", "", tt.err)
		_, err := Resolve(context.Background(), f, dir)
		var ae *api.Error
		if !errors.As(err, &ae) || !strings.Contains(ae.Message, tt.wantMsg) || !strings.Contains(ae.Hint, tt.wantHint) {
			t.Errorf("%s: err = %v", tt.name, err)
		}
	}
}

// TestSpecialFilesSkipped: a FIFO or socket in the working tree or .git is
// reported as skipped, and reading it never blocks.
func TestSpecialFilesSkipped(t *testing.T) {
	t.Parallel()
	dir := newRepo(t)
	must(t, syscall.Mkfifo(filepath.Join(dir, "untracked.fifo"), 0o644))
	must(t, syscall.Mkfifo(filepath.Join(dir, ".git", "daemon.fifo"), 0o644))
	ctx := context.Background()
	repo, err := Resolve(ctx, system.Exec{}, dir)
	must(t, err)
	ws, err := Prepare(ctx, system.Exec{}, repo, Options{})
	must(t, err)
	defer ws.Close()
	var buf bytes.Buffer
	st, err := ws.WriteOverlay(ctx, &buf)
	must(t, err)
	// git does not list FIFOs; were it to, addEntry skips them.
	if slices.Contains(tarNames(t, buf.Bytes()), "untracked.fifo") {
		t.Fatalf("overlay carries a FIFO; skipped %+v", st.Skipped)
	}
	buf.Reset()
	st, err = WriteFullCopy(ctx, repo, &buf)
	must(t, err)
	var skipped []string
	for _, s := range st.Skipped {
		skipped = append(skipped, s.Path)
	}
	if !slices.Equal(skipped, []string{".git/daemon.fifo", "untracked.fifo"}) {
		t.Fatalf("full copy skipped %q", skipped)
	}
	if names := tarNames(t, buf.Bytes()); !slices.Contains(names, ".git/HEAD") || !slices.Contains(names, "src/") {
		t.Fatalf("full copy entries: %q", names)
	}
}
