package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// egressConfig is an instance whose VMs go through the gateway with the
// policy "e2e", whose test names resolve to the fake upstreams, and whose
// Anthropic credentials are brokered.
func egressConfig(f *fakeUpstreams, authHome string) string {
	return fmt.Sprintf(`[vm]
boot_timeout = "100s"
egress = "allow"
[auth]
home = %q
[egress]
default_policy = "e2e"
resolve = %s
upstream_ca_file = %q
[egress.policy.e2e]
allow = ["allowed.test:443", "plain.test:80", "api.anthropic.com:443", "console.anthropic.com:443"]
[credentials]
mode = "broker"
env = ["ANTHROPIC_API_KEY"]
`, authHome, f.resolveTOML(), f.caFile)
}

// writeBrokerAuth writes the host's Claude Code credentials (the real
// tokens the broker keeps on the host) under home.
func writeBrokerAuth(t *testing.T, home string, f *fakeUpstreams) string {
	t.Helper()
	p := filepath.Join(home, ".claude", ".credentials.json")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	creds := fmt.Sprintf(`{"claudeAiOauth":{"accessToken":%q,"refreshToken":%q,"expiresAt":%d,"scopes":["user:inference"],"subscriptionType":"max"}}`,
		f.realAccess, f.realRefresh, time.Now().Add(time.Hour).UnixMilli())
	if err := os.WriteFile(p, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// egressRecords reads `banger vm egress log NAME --json` (a JSON array or
// one object per line).
func egressRecords(t *testing.T, in *instance, vm string, extra ...string) []map[string]any {
	t.Helper()
	r := in.must(t, append([]string{"vm", "egress", "log", vm, "--json"}, extra...)...)
	var recs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &recs); err == nil {
		return recs
	}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("egress log --json: %v\n%s", err, r.stdout)
		}
		recs = append(recs, m)
	}
	return recs
}

func findRecord(recs []map[string]any, match func(map[string]any) bool) map[string]any {
	for _, r := range recs {
		if match(r) {
			return r
		}
	}
	return nil
}

func str(m map[string]any, k string) string {
	if v, ok := m[k]; ok && v != nil {
		return fmt.Sprint(v)
	}
	return ""
}

// TestEgressGateway is an agent VM behind the gateway with policy "e2e"
// and brokered Anthropic credentials. Every upstream is a fake on the
// host's loopback reached through the resolver override.
//   - allowed name and port: reached, logged with the session and process;
//   - an allowed name on another port: HTTP 403 whose text names the host,
//     the policy and the command that allows it;
//   - a name outside the policy does not resolve; a TLS connection by
//     address to an unknown name gets a TLS alert and a journal line;
//   - live changes: allow a name, deny another, each seen at once;
//   - the broker: the fake Messages API gets the real key while the guest
//     (its files, every process's environment, the VM's disks) holds
//     only placeholders; a refresh from the guest rotates the host file
//     and the guest still sees placeholders; a placeholder sent to
//     another host is blocked and logged as a leak;
//   - a real agent (claude -p) answers through the broker;
//   - a guest root that removes the redirect has no network at all.
func TestEgressGateway(t *testing.T) {
	requireVM(t)
	marker := fmt.Sprint(time.Now().UnixNano())
	dir := t.TempDir()
	f := startFakeUpstreams(t, dir, marker, hostListen(t))
	authHome := filepath.Join(dir, "home")
	credsPath := writeBrokerAuth(t, authHome, f)
	in := newWrappedInstance(t, egressConfig(f, authHome), nil, "ANTHROPIC_API_KEY="+f.realKey)
	t.Cleanup(in.shutdown)
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	img := ensureAgentImage(t, in)

	const name = "e2e-egress"
	// --egress allow (the config's default) overrides createVM's none.
	in.createVM(t, name, "--image", img, "--egress", "allow")
	defer in.run(nil, "vm", "delete", "--force", name)
	vm := in.vm(t, name)
	if vm.Egress != "allow" || vm.EgressPolicy != "e2e" {
		t.Errorf("vm show: egress %q policy %q, want allow / e2e", vm.Egress, vm.EgressPolicy)
	}
	if show := in.must(t, "vm", "show", name).stdout; !strings.Contains(show, "e2e") {
		t.Errorf("vm show does not name the egress policy:\n%s", show)
	}
	in.must(t, "vm", "egress", "show", name)
	exec := func(script string) result {
		return in.run(nil, "vm", "exec", name, "--", "bash", "-c", script)
	}
	if r := in.run(bytes.NewReader(f.caPEM), "vm", "exec", "-i", name, "--", "sh", "-c", "cat > /tmp/upstream-ca.pem"); r.code != 0 {
		t.Fatalf("push the upstream CA: %s", r)
	}

	t.Run("allowed", func(t *testing.T) {
		in.must(t, "vm", "session", "start", name, "--name", "fetch", "--",
			"curl", "-sS", "--max-time", "20", "--cacert", "/tmp/upstream-ca.pem", "https://allowed.test/hello")
		out := in.must(t, "vm", "session", "logs", name, "fetch", "--follow").stdout
		if !strings.Contains(out, "hello from allowed.test") {
			t.Fatalf("curl https://allowed.test in a session: %q\n%s", out, in.must(t, "vm", "session", "logs", name, "fetch", "--stderr").stdout)
		}
		rec := findRecord(egressRecords(t, in, name), func(m map[string]any) bool {
			return str(m, "name") == "allowed.test" && str(m, "port") == "443" && str(m, "decision") == "allow"
		})
		if rec == nil {
			t.Fatalf("no allow record for allowed.test:443: %v", egressRecords(t, in, name))
		}
		if str(rec, "session") == "" || str(rec, "process") != "curl" {
			t.Errorf("allow record not attributed to the session's curl: %v", rec)
		}
		if str(rec, "bytes_down") == "0" || str(rec, "bytes_up") == "0" {
			t.Errorf("allow record has no byte counts: %v", rec)
		}
	})

	t.Run("denied", func(t *testing.T) {
		// An allowed name on a port the policy does not allow: the
		// gateway answers HTTP with an explanation.
		r := exec("curl -sS --max-time 20 -w '\\n%{http_code}' http://allowed.test/")
		if !strings.Contains(r.stdout, "403") || !strings.Contains(r.stdout, "banger vm egress allow "+name) || !strings.Contains(r.stdout, `"e2e"`) {
			t.Errorf("http to a denied port: want a 403 naming the policy and the allow command, got %s", r)
		}
		// A name outside the policy does not resolve.
		if r := exec("getent hosts denied.test"); r.code == 0 {
			t.Errorf("denied.test resolved in the guest: %s", r)
		}
		// TLS by address (one the guest made up; the redirect takes the
		// connection before it leaves the guest, and the gateway dials
		// nothing it denies) to a name outside the policy: the name
		// comes from the SNI, the answer is a TLS alert and a journal
		// line that explains.
		r = exec("curl -sS --max-time 20 --resolve sneaky.test:443:203.0.113.7 https://sneaky.test/; echo rc=$?")
		if !strings.Contains(r.stdout, "rc=35") && !strings.Contains(r.stderr, "alert") {
			t.Errorf("TLS to an unknown name: want a TLS alert (curl exit 35), got %s", r)
		}
		j := exec("journalctl -b --no-pager -o cat | grep -F sneaky.test | tail -3")
		if !strings.Contains(j.stdout, "banger vm egress allow") {
			t.Errorf("guest journal does not explain the denial of sneaky.test: %s", j)
		}
		denied := egressRecords(t, in, name, "--denied")
		if len(denied) == 0 {
			t.Fatal("egress log --denied is empty")
		}
		for _, d := range denied {
			if str(d, "decision") == "allow" {
				t.Errorf("--denied lists an allowed record: %v", d)
			}
		}
		for _, want := range []string{"denied.test", "sneaky.test"} {
			if findRecord(denied, func(m map[string]any) bool { return str(m, "name") == want }) == nil {
				t.Errorf("no deny record for %s: %v", want, denied)
			}
		}
		if findRecord(denied, func(m map[string]any) bool { return str(m, "name") == "allowed.test" && str(m, "port") == "80" }) == nil {
			t.Errorf("no deny record for allowed.test:80: %v", denied)
		}
	})

	t.Run("live", func(t *testing.T) {
		in.must(t, "vm", "egress", "allow", name, "denied.test:443")
		if r := exec("curl -sS --max-time 20 --cacert /tmp/upstream-ca.pem https://denied.test/"); !strings.Contains(r.stdout, "hello from denied.test") {
			t.Errorf("after `vm egress allow`: %s", r)
		}
		in.must(t, "vm", "egress", "deny", name, "denied.test")
		if r := exec("curl -sS --max-time 20 --cacert /tmp/upstream-ca.pem https://denied.test/"); r.code == 0 {
			t.Errorf("after `vm egress deny`, denied.test still answers: %s", r)
		}
		learn := in.must(t, "vm", "egress", "learn", name).stdout
		if !strings.Contains(learn, "allowed.test") {
			t.Errorf("egress learn does not list allowed.test:\n%s", learn)
		}
	})

	t.Run("broker", func(t *testing.T) {
		ph := strings.TrimSpace(exec("printf %s \"$ANTHROPIC_API_KEY\"").stdout)
		if ph == "" || strings.Contains(ph, f.realKey) {
			t.Fatalf("guest ANTHROPIC_API_KEY = %q: want a placeholder", ph)
		}
		r := exec(`curl -sS --max-time 30 https://api.anthropic.com/v1/messages -H "x-api-key: $ANTHROPIC_API_KEY" -H 'content-type: application/json' -d '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'`)
		if !strings.Contains(r.stdout, brokerOK) {
			t.Errorf("messages through the broker with the placeholder key: %s", r)
		}
		// Nothing in the guest holds a real secret: files under /root,
		// /etc, /run, /tmp and every process's environment.
		for _, secret := range []string{f.realKey, f.realAccess, f.realRefresh} {
			g := exec(fmt.Sprintf("grep -rlF %q /root /etc /run /tmp 2>/dev/null; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -cF %q", secret, secret))
			if strings.TrimSpace(g.stdout) != "0" {
				t.Errorf("the guest holds a real secret (%.20s...): %s", secret, g)
			}
		}
		guestCreds := exec("cat /root/.claude/.credentials.json").stdout
		if !strings.Contains(guestCreds, "claudeAiOauth") || !strings.Contains(guestCreds, "accessToken") {
			t.Errorf("guest credentials lost their shape: %s", guestCreds)
		}
		// Refresh from the guest with its placeholder refresh token.
		r = exec(`rt=$(jq -r .claudeAiOauth.refreshToken /root/.claude/.credentials.json); curl -sS --max-time 30 https://console.anthropic.com/v1/oauth/token -H 'content-type: application/json' -d "{\"grant_type\":\"refresh_token\",\"refresh_token\":\"$rt\",\"client_id\":\"e2e\"}"`)
		if strings.Contains(r.stdout, f.newAccess) || strings.Contains(r.stdout, f.newRefresh) || !strings.Contains(r.stdout, "access_token") {
			t.Errorf("refresh answer in the guest: want placeholders, got %s", r)
		}
		host, err := os.ReadFile(credsPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(host), f.newAccess) || !strings.Contains(string(host), f.newRefresh) || !strings.Contains(string(host), "subscriptionType") {
			t.Errorf("host credentials not rotated in place: %s", host)
		}
		if st, _ := os.Stat(credsPath); st.Mode().Perm() != 0o600 {
			t.Errorf("host credentials mode %v after refresh, want 0600", st.Mode().Perm())
		}
		if _, _, n := f.seen(); n != 1 {
			t.Errorf("upstream saw %d refreshes, want 1", n)
		}
		// The guest's OAuth placeholder now stands for the new token.
		r = exec(`at=$(jq -r .claudeAiOauth.accessToken /root/.claude/.credentials.json); curl -sS --max-time 30 https://api.anthropic.com/v1/messages -H "authorization: Bearer $at" -H 'content-type: application/json' -d '{"model":"m","max_tokens":5,"messages":[]}'`)
		if !strings.Contains(r.stdout, brokerOK) {
			t.Errorf("messages with the OAuth placeholder after the refresh: %s", r)
		}
		// A placeholder sent to a host the broker does not serve.
		r = exec(`curl -sS --max-time 20 http://plain.test/ -H "x-api-key: $ANTHROPIC_API_KEY"; echo; echo rc=$?`)
		if strings.Contains(r.stdout, "hello from plain.test") {
			t.Errorf("a placeholder reached plain.test: %s", r)
		}
		_, plain, _ := f.seen()
		for _, p := range plain {
			if strings.Contains(p, ph) {
				t.Errorf("plain.test saw the placeholder: %s", p)
			}
		}
		if findRecord(egressRecords(t, in, name), func(m map[string]any) bool { return str(m, "decision") == "leak" }) == nil {
			t.Errorf("no leak record for the placeholder sent to plain.test")
		}
		keys, _, _ := f.seen()
		for _, k := range keys {
			if strings.Contains(k, "banger-ph") {
				t.Errorf("the upstream saw a placeholder: %s", k)
			}
		}
		// The VM's disks on the host never held a real secret.
		assertNotInFiles(t, vmFiles(in, vm.Dir), f.realKey, f.realAccess, f.realRefresh, f.newAccess, f.newRefresh)
	})

	t.Run("claude", func(t *testing.T) {
		in.must(t, "vm", "session", "start", name, "--name", "claude",
			"--env", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "--env", "DISABLE_AUTOUPDATER=1",
			"--", "timeout", "120", "claude", "-p", "say hello")
		out := in.must(t, "vm", "session", "logs", name, "claude", "--follow").stdout
		if !strings.Contains(out, brokerOK) {
			t.Errorf("claude -p through the broker: stdout %q\nstderr %s", out, in.run(nil, "vm", "session", "logs", name, "claude", "--stderr").stdout)
		}
	})

	t.Run("no-redirect", func(t *testing.T) {
		// A guest root that removes the redirect only loses its network:
		// no DNS, no name, no direct path to the host's loopback.
		r := exec(fmt.Sprintf(`/run/banger/seed/banger-agent egress-off || exit 9
getent hosts allowed.test && echo dns=open || echo dns=closed
timeout 8 bash -c 'exec 3<>/dev/tcp/10.0.2.2/%s' && echo host=open || echo host=closed
curl -sS --max-time 8 http://plain.test/ && echo name=open || echo name=closed`, portOf(f.plainAddr)))
		if r.code == 9 {
			t.Fatalf("remove the redirect: %s", r)
		}
		for _, want := range []string{"dns=closed", "host=closed", "name=closed"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("without the redirect, want %s: %s", want, r)
			}
		}
	})
}

func portOf(addr string) string {
	_, p, _ := strings.Cut(addr, ":")
	return p
}

// assertNotInFiles fails when one of the files (disks included; read
// in chunks) holds one of the secrets.
func assertNotInFiles(t *testing.T, files []string, secrets ...string) {
	t.Helper()
	overlap := 0
	for _, s := range secrets {
		overlap = max(overlap, len(s))
	}
	for _, p := range files {
		fh, err := os.Open(p)
		if err != nil {
			continue
		}
		buf := make([]byte, 4<<20)
		carry := 0
		for {
			n, err := fh.Read(buf[carry:])
			chunk := buf[:carry+n]
			for _, s := range secrets {
				if bytes.Contains(chunk, []byte(s)) {
					t.Errorf("%s holds a real secret (%.20s...)", p, s)
				}
			}
			if err != nil {
				break
			}
			carry = min(overlap, len(chunk))
			copy(buf, chunk[len(chunk)-carry:])
		}
		fh.Close()
	}
}

// vmFiles lists the regular files of a VM's directory (its disks, seed,
// logs) and the instance's daemon log and database.
func vmFiles(in *instance, vmDir string) []string {
	var out []string
	filepath.WalkDir(vmDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	m, _ := filepath.Glob(filepath.Join(in.home, "state.db*"))
	return append(append(out, filepath.Join(in.home, "daemon.log")), m...)
}

// TestEgressGatewayTap is the gateway in tap mode, inside the test's own
// network namespace: the guest has an address on the bridge, yet its
// only way out is the gateway. An allowed name is reached through it; a
// guest root that removes the redirect reaches neither the bridge
// address nor the upstream.
func TestEgressGatewayTap(t *testing.T) {
	requireVM(t)
	ns := newNamespace(t)
	f := startFakeUpstreams(t, t.TempDir(), "tap", ns.listener(t))
	cfg := fmt.Sprintf(`[vm]
boot_timeout = "100s"
[network]
subnet = "172.30.0.0/30"
dns = ["172.30.0.1"]
[auth]
files = []
[egress]
resolve = { "plain.test" = %q }
[egress.policy.tapgw]
allow = ["plain.test:80"]
`, f.plainAddr)
	in := newWrappedInstance(t, cfg, ns.wrap())
	t.Cleanup(in.shutdown)
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	const name = "e2e-egress-tap"
	in.createVM(t, name, "--net", "tap", "--egress", "tapgw")
	defer in.run(nil, "vm", "delete", "--force", name)
	ns.listen(t, "172.30.0.1:8080")
	get := `exec 3<>/dev/tcp/plain.test/80 && printf 'GET / HTTP/1.0\r\nHost: plain.test\r\n\r\n' >&3 && timeout 10 cat <&3`
	if r := in.run(nil, "vm", "exec", name, "--", "bash", "-c", get); !strings.Contains(r.stdout, "hello from plain.test") {
		t.Fatalf("tap guest through the gateway: %s\n%s", r, in.daemonLog())
	}
	if findRecord(egressRecords(t, in, name), func(m map[string]any) bool {
		return str(m, "name") == "plain.test" && str(m, "decision") == "allow"
	}) == nil {
		t.Errorf("no allow record for plain.test")
	}
	got := guestProbes(t, in, name, fmt.Sprintf(`/run/banger/seed/banger-agent egress-off || exit 9
probe 172.30.0.1 8080 bridge
probe 172.30.0.1 %s upstream
`, portOf(f.plainAddr)))
	if got["bridge"] != "closed" || got["upstream"] != "closed" {
		t.Errorf("tap guest without the redirect reached the host: %v", got)
	}
}
