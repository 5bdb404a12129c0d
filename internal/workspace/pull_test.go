package workspace

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/system"
)

var sha1a = strings.Repeat("a", 40)

// TestGuestRefToHost: the refs a guest sends during pull are taken only
// as branches and tags, with names git accepts, and map under the VM's
// prefixes.
func TestGuestRefToHost(t *testing.T) {
	t.Parallel()
	good := map[string]string{
		"refs/heads/main":        "refs/remotes/banger/vm1/main",
		"refs/heads/agent/x-1":   "refs/remotes/banger/vm1/agent/x-1",
		"refs/tags/v1.0":         "refs/banger/vm1/tags/v1.0",
		"refs/heads/ünïcode":     "refs/remotes/banger/vm1/ünïcode",
		"refs/heads/a@b":         "refs/remotes/banger/vm1/a@b",
		"refs/heads/with.dot.ok": "refs/remotes/banger/vm1/with.dot.ok",
	}
	for name, want := range good {
		got, err := GuestRefToHost("vm1", Ref{Name: name, Object: sha1a}, 40)
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", name, got, err, want)
		}
	}
	bad := []string{
		"HEAD", "refs/remotes/origin/main", "refs/banger/vm1/tags/x", "refs/notes/commits", "refs/stash",
		"refs/heads/", "refs/tags/", "refs/heads/../../../etc/passwd", "refs/heads/a/../b",
		"refs/heads/a..b", "refs/heads/.hidden", "refs/heads/a/.b", "refs/heads/x.lock", "refs/heads/a.lock/b",
		"refs/heads/a b", "refs/heads/a~1", "refs/heads/a^", "refs/heads/a:b", "refs/heads/a?", "refs/heads/a*",
		"refs/heads/a[", "refs/heads/a\\b", "refs/heads/a\x00b", "refs/heads/a\nb", "refs/heads/a\x7f",
		"refs/heads/a//b", "refs/heads/a/", "refs/heads/a.", "refs/heads/a@{1}", "/refs/heads/a", "refs/heads",
		"refs/heads/" + strings.Repeat("x", maxRefName),
	}
	for _, name := range bad {
		if got, err := GuestRefToHost("vm1", Ref{Name: name, Object: sha1a}, 40); err == nil {
			t.Errorf("accepted %q as %q", name, got)
		}
	}
	for _, obj := range []string{"", "a", strings.Repeat("a", 39), strings.Repeat("g", 40), strings.Repeat("A", 40) + "\n", strings.Repeat("a", 64), "HEAD", "main"} {
		if _, err := GuestRefToHost("vm1", Ref{Name: "refs/heads/x", Object: obj}, 40); err == nil {
			t.Errorf("accepted object %q", obj)
		}
	}
	for _, obj := range []string{strings.Repeat("a", 40), strings.Repeat("b", 64)} {
		if _, err := GuestRefToHost("vm1", Ref{Name: "refs/heads/x", Object: obj}, 0); err != nil {
			t.Errorf("object %q with an unknown hash: %v", obj, err)
		}
	}
}

// FuzzGuestRefToHost: whatever a guest sends, an accepted ref lands under
// the VM's branch or tag prefix, carries the guest's short name unchanged,
// and is a name git itself accepts (git check-ref-format is the oracle
// when git is installed).
func FuzzGuestRefToHost(f *testing.F) {
	for _, s := range []string{"refs/heads/main", "refs/tags/v1", "refs/heads/../x", "refs/heads/a.lock", "HEAD", "refs/heads/a@{0}", "refs/heads/\x00", "refs/tags/a/b/c", "refs/heads/ü"} {
		f.Add(s, sha1a)
	}
	gitPath, _ := exec.LookPath("git")
	f.Fuzz(func(t *testing.T, name, obj string) {
		host, err := GuestRefToHost("vm1", Ref{Name: name, Object: obj}, 40)
		if err != nil {
			return
		}
		branches, tags := HostRefPrefixes("vm1")
		var short string
		switch {
		case strings.HasPrefix(host, branches) && strings.HasPrefix(name, "refs/heads/"):
			short = strings.TrimPrefix(host, branches)
			if short != strings.TrimPrefix(name, "refs/heads/") {
				t.Fatalf("%q mapped to %q", name, host)
			}
		case strings.HasPrefix(host, tags) && strings.HasPrefix(name, "refs/tags/"):
			short = strings.TrimPrefix(host, tags)
			if short != strings.TrimPrefix(name, "refs/tags/") {
				t.Fatalf("%q mapped to %q", name, host)
			}
		default:
			t.Fatalf("%q mapped outside the prefixes: %q", name, host)
		}
		for part := range strings.SplitSeq(short, "/") {
			if part == "" || part == "." || part == ".." {
				t.Fatalf("%q has component %q", name, part)
			}
		}
		if !isHex(obj) || len(obj) != 40 {
			t.Fatalf("accepted object %q", obj)
		}
		if gitPath != "" {
			if out, err := exec.Command(gitPath, "check-ref-format", host).CombinedOutput(); err != nil {
				t.Fatalf("accepted %q, which git refuses: %v %s", host, err, out)
			}
		}
	})
}

// pullFixture is a host repository and a guest clone of it, as after a
// workspace prepare.
func pullFixture(t *testing.T) (host string, repo Repo, guest string) {
	t.Helper()
	host = newRepo(t)
	guest = filepath.Join(t.TempDir(), "guest")
	git(t, t.TempDir(), "clone", "-q", host, guest)
	git(t, guest, "config", "user.name", "Agent")
	git(t, guest, "config", "user.email", "agent@example.com")
	r, err := Resolve(context.Background(), system.Exec{}, host)
	if err != nil {
		t.Fatal(err)
	}
	return host, r, guest
}

// guestExport is the guest side of a pull: its branches and tags and a
// bundle of what the host lacks, written to a file as the daemon does.
func guestExport(t *testing.T, guest string, have []string) ([]Ref, string) {
	t.Helper()
	ctx := context.Background()
	refs, err := ListRefs(ctx, system.Exec{}, guest)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteExportBundle(ctx, system.Exec{}, guest, refs, have, &b); err != nil {
		t.Fatal(err)
	}
	if b.Len() == 0 {
		return refs, ""
	}
	f := filepath.Join(t.TempDir(), "pull.bundle")
	if err := os.WriteFile(f, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return refs, f
}

// TestPullPrunesDeletedBranches: a branch (or tag) the guest deleted since
// the last pull disappears from the host's banger refs on the next pull;
// the host's own branches are never touched.
func TestPullPrunesDeletedBranches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	host, repo, guest := pullFixture(t)
	git(t, guest, "checkout", "-q", "-b", "agent/one")
	writeFile(t, filepath.Join(guest, "one.txt"), "one\n", 0o644)
	git(t, guest, "add", "one.txt")
	git(t, guest, "commit", "-q", "-m", "one")
	git(t, guest, "branch", "agent/two")
	git(t, guest, "tag", "guest-tag")
	refs, bundle := guestExport(t, guest, []string{repo.Head})
	res, err := ImportPull(ctx, system.Exec{}, repo, "vm1", refs, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 0 {
		t.Fatalf("first pull removed %+v", res.Removed)
	}
	hostBranches := git(t, host, "for-each-ref", "--format=%(refname)", "refs/heads/")
	for _, r := range []string{"refs/remotes/banger/vm1/agent/one", "refs/remotes/banger/vm1/agent/two", "refs/banger/vm1/tags/guest-tag"} {
		git(t, host, "rev-parse", "--verify", "-q", r)
	}

	git(t, guest, "checkout", "-q", "main")
	git(t, guest, "branch", "-q", "-D", "agent/two")
	git(t, guest, "tag", "-d", "guest-tag")
	refs, bundle = guestExport(t, guest, []string{repo.Head})
	res, err = ImportPull(ctx, system.Exec{}, repo, "vm1", refs, bundle)
	if err != nil {
		t.Fatal(err)
	}
	var removed []string
	for _, r := range res.Removed {
		removed = append(removed, r.HostRef)
	}
	if got := strings.Join(removed, ","); got != "refs/banger/vm1/tags/guest-tag,refs/remotes/banger/vm1/agent/two" {
		t.Fatalf("removed = %s", got)
	}
	left := git(t, host, "for-each-ref", "--format=%(refname)", "refs/remotes/banger/vm1/", "refs/banger/vm1/")
	if strings.Contains(left, "agent/two") || strings.Contains(left, "guest-tag") || !strings.Contains(left, "agent/one") {
		t.Fatalf("banger refs after the second pull:\n%s", left)
	}
	if after := git(t, host, "for-each-ref", "--format=%(refname)", "refs/heads/"); after != hostBranches {
		t.Fatalf("host branches changed:\n%s\nwas:\n%s", after, hostBranches)
	}
	// Another VM's refs are not this VM's to prune.
	git(t, host, "update-ref", "refs/remotes/banger/vm2/keep", repo.Head)
	if _, err := ImportPull(ctx, system.Exec{}, repo, "vm1", nil, ""); err != nil {
		t.Fatal(err)
	}
	git(t, host, "rev-parse", "--verify", "-q", "refs/remotes/banger/vm2/keep")
}

// TestPullRefusesBadGuestRefs: a hostile guest's ref list is refused as a
// whole, and the host repository's refs are exactly as before.
func TestPullRefusesBadGuestRefs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	host, repo, guest := pullFixture(t)
	git(t, guest, "checkout", "-q", "-b", "agent")
	writeFile(t, filepath.Join(guest, "x.txt"), "x\n", 0o644)
	git(t, guest, "add", "x.txt")
	git(t, guest, "commit", "-q", "-m", "x")
	refs, bundle := guestExport(t, guest, []string{repo.Head})
	head := strings.TrimSpace(git(t, guest, "rev-parse", "HEAD"))
	before := git(t, host, "for-each-ref")
	for name, bad := range map[string]Ref{
		"outside the prefixes": {Name: "refs/remotes/origin/main", Object: head},
		"host branch":          {Name: "refs/heads/../../refs/heads/main", Object: head},
		"HEAD":                 {Name: "HEAD", Object: head},
		"dot dot":              {Name: "refs/heads/a..b", Object: head},
		"lock":                 {Name: "refs/heads/main.lock", Object: head},
		"newline":              {Name: "refs/heads/x\nupdate refs/heads/main " + head, Object: head},
		"short object":         {Name: "refs/heads/y", Object: head[:7]},
		"missing object":       {Name: "refs/heads/y", Object: strings.Repeat("e", 40)},
		"twice":                {Name: "refs/heads/agent", Object: repo.Head},
	} {
		_, err := ImportPull(ctx, system.Exec{}, repo, "vm1", append(append([]Ref(nil), refs...), bad), bundle)
		if err == nil {
			t.Errorf("%s: accepted %+v", name, bad)
		}
		if after := git(t, host, "for-each-ref"); after != before {
			t.Fatalf("%s: refs changed:\n%s\nwas:\n%s", name, after, before)
		}
	}
	// A bad VM name is refused before anything is read.
	if _, err := ImportPull(ctx, system.Exec{}, repo, "../x", refs, bundle); err == nil {
		t.Error("accepted VM name ../x")
	}
}
