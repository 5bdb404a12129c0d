package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/image"
)

// writeFakeAuth puts fake agent credentials into the shared daemon's
// auth home; each carries marker so a leak into a log is findable.
func writeFakeAuth(t *testing.T, marker string) map[string]string {
	t.Helper()
	files := map[string]string{
		".local/share/opencode/auth.json": `{"anthropic":{"type":"api","key":"` + marker + `-opencode"}}`,
		".claude/.credentials.json":       `{"claudeAiOauth":{"accessToken":"` + marker + `-claude"}}`,
		".claude.json":                    `{"userID":"` + marker + `-claudejson"}`,
		".pi/agent/auth.json":             `{"anthropic":{"key":"` + marker + `-pi"}}`,
	}
	for rel, data := range files {
		p := filepath.Join(authHome, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for rel := range files {
			os.Remove(filepath.Join(authHome, rel))
		}
	})
	return files
}

// assertNoSecretInLogs looks for marker in every file of the instance's
// home (daemon log, VM console logs, operation records in SQLite, image
// build logs), except the seed disks that carry the files on purpose, and
// in the guest's journal.
func assertNoSecretInLogs(t *testing.T, in *instance, vm, marker string) {
	t.Helper()
	filepath.WalkDir(in.home, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		base := filepath.Base(p)
		if base == "seed.ext4" || strings.HasSuffix(base, ".ext4") || strings.HasSuffix(base, ".qcow2") || strings.HasSuffix(base, ".sock") {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 64<<20 {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), marker) {
			t.Errorf("auth file contents found in %s", p)
		}
		return nil
	})
	r := in.run(nil, "vm", "exec", vm, "--", "journalctl", "-b", "--no-pager")
	if strings.Contains(r.stdout, marker) {
		t.Errorf("auth file contents found in the guest journal")
	}
}

// TestAuthSyncAndWorkDisk checks that the host user's agent credentials
// arrive 0600 at every boot (and a host-side refresh reaches the VM at
// its next boot), that contents never reach a log, that the work disk is
// marked with its seed fingerprint, grows with `vm start --disk` and
// refuses to shrink, and that a stale nested /root/root is repaired.
func TestAuthSyncAndWorkDisk(t *testing.T) {
	in := shared(t)
	const name = "e2e-auth"
	marker := "BANGERSECRET" + filepath.Base(in.home)
	files := writeFakeAuth(t, marker)
	// One configured file is missing: it is skipped, not an error.
	os.Remove(filepath.Join(authHome, ".pi/agent/auth.json"))
	delete(files, ".pi/agent/auth.json")

	vm := in.createVM(t, name, "--disk", "1")
	defer in.run(nil, "vm", "delete", "--force", name)
	if strings.Join(vm.AuthSynced, ",") != ".local/share/opencode/auth.json,.claude/.credentials.json,.claude.json" {
		t.Fatalf("auth synced = %v", vm.AuthSynced)
	}
	if len(vm.WorkSeedFingerprint) != 64 || vm.ImageWorkSeedFingerprint != "" {
		t.Fatalf("work seed fingerprint %q (image's now %q)", vm.WorkSeedFingerprint, vm.ImageWorkSeedFingerprint)
	}
	show := in.must(t, "vm", "show", name).stdout
	if !strings.Contains(show, "auth synced:") || !strings.Contains(show, ".claude.json") || !strings.Contains(show, "work seed:") || strings.Contains(show, marker) {
		t.Fatalf("vm show:\n%s", show)
	}
	if full, _ := os.ReadFile(filepath.Join(in.home, "daemon.log")); !strings.Contains(string(full), "auth files not found on the host, skipped") {
		t.Errorf("no info line for the missing auth file")
	}

	checkFiles := func(want map[string]string) {
		t.Helper()
		for rel, data := range want {
			r := in.must(t, "vm", "exec", name, "--", "stat", "-c", "%a %U", "/root/"+rel)
			if strings.TrimSpace(r.stdout) != "600 root" {
				t.Errorf("/root/%s: mode/owner %q, want 600 root", rel, r.stdout)
			}
			r = in.must(t, "vm", "exec", name, "--", "cat", "/root/"+rel)
			if r.stdout != data {
				t.Errorf("/root/%s has other contents than the host's", rel)
			}
		}
	}
	checkFiles(files)
	r := in.must(t, "vm", "exec", name, "--", "cat", "/root/"+image.FileWorkSeedMark)
	if strings.TrimSpace(r.stdout) != vm.WorkSeedFingerprint {
		t.Fatalf("work seed mark %q, want %s", r.stdout, vm.WorkSeedFingerprint)
	}

	// Leave a stale nested layout and a broken ~/.ssh mode behind.
	in.must(t, "vm", "exec", name, "--", "sh", "-c",
		"rm /root/.bashrc && mkdir -p /root/root/proj && echo kept > /root/root/proj/f && echo '# nested bashrc' > /root/root/.bashrc && chmod 777 /root/.ssh && sync")
	// A token refreshed on the host reaches the VM at its next boot.
	refreshed := `{"userID":"` + marker + `-refreshed"}`
	os.WriteFile(filepath.Join(authHome, ".claude.json"), []byte(refreshed), 0o600)
	files[".claude.json"] = refreshed

	in.must(t, "vm", "stop", name)
	r = in.run(nil, "vm", "start", name, "--disk", "2", "--json")
	if r.code != 0 {
		t.Fatalf("start --disk 2: %s\ndaemon log:\n%s", r, in.daemonLog())
	}
	if got := in.vm(t, name); got.WorkDiskBytes != 2<<30 || got.State != "running" {
		t.Fatalf("after grow: %+v", got)
	}
	r = in.must(t, "vm", "exec", name, "--", "df", "-B1", "--output=size", "/root")
	lines := strings.Fields(r.stdout)
	if len(lines) != 2 || atoi(lines[1]) < 1800<<20 {
		t.Fatalf("/root after grow: %q", r.stdout)
	}
	checkFiles(files)

	// The nested layout was merged back and ~/.ssh made private again.
	r = in.must(t, "vm", "exec", name, "--", "sh", "-c",
		"cat /root/proj/f /root/.bashrc; test -e /root/root && echo NESTED; stat -c %a /root/.ssh")
	if r.stdout != "kept\n# nested bashrc\n700\n" {
		t.Fatalf("home after repair: %q", r.stdout)
	}
	assertNoSecretInLogs(t, in, name, marker)

	// Shrinking is refused with a clear error; the VM stays stopped and
	// keeps its disk.
	in.must(t, "vm", "stop", name)
	r = in.run(nil, "vm", "start", name, "--disk", "1")
	if r.code == 0 || !strings.Contains(r.stderr, "shrinking it to 1 GiB is not supported") {
		t.Fatalf("shrink: %s", r)
	}
	if got := in.vm(t, name); got.WorkDiskBytes != 2<<30 || got.State != "stopped" {
		t.Fatalf("after refused shrink: %+v", got)
	}
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
