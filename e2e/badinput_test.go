package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/store"
)

// snapshot is everything a failed request must leave untouched.
type snapshot struct {
	vms, ports int
	vmDirs     []string
	procs      int
}

func takeSnapshot(t *testing.T, in *instance) snapshot {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(in.home, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	vms, err := st.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{vms: len(vms), procs: len(instanceProcesses(in.home))}
	for _, vm := range vms {
		p, _ := st.PortsForVM(context.Background(), vm.ID)
		s.ports += len(p)
	}
	entries, _ := os.ReadDir(filepath.Join(in.home, "vms"))
	for _, e := range entries {
		s.vmDirs = append(s.vmDirs, e.Name())
	}
	return s
}

func (s snapshot) equal(o snapshot) bool {
	return s.vms == o.vms && s.ports == o.ports && s.procs == o.procs && strings.Join(s.vmDirs, ",") == strings.Join(o.vmDirs, ",")
}

// TestBadInput: each bad request gets a clear error and a non-zero exit,
// and leaves no process, disk, port or row behind.
func TestBadInput(t *testing.T) {
	in := shared(t)
	before := takeSnapshot(t, in)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"uppercase name", []string{"vm", "create", "Bad_Name"}, 1, "invalid VM name"},
		{"name too long", []string{"vm", "create", "a234567890123456789012345678901234"}, 1, "invalid VM name"},
		{"leading digit", []string{"vm", "create", "1vm"}, 1, "invalid VM name"},
		{"unknown image", []string{"vm", "create", "x1", "--image", "nope"}, 1, "unknown image"},
		{"zero cpus", []string{"vm", "create", "x1", "--cpus", "-1"}, 1, "impossible vCPU count"},
		{"too many cpus", []string{"vm", "create", "x1", "--cpus", "1000"}, 1, "impossible vCPU count"},
		{"tiny memory", []string{"vm", "create", "x1", "--memory", "16"}, 1, "impossible memory size"},
		{"huge memory", []string{"vm", "create", "x1", "--memory", "99999999"}, 1, "impossible memory size"},
		{"huge disk", []string{"vm", "create", "x1", "--disk", "100000"}, 1, "impossible work disk size"},
		{"bad egress", []string{"vm", "create", "x1", "--egress", "some"}, 1, "unknown egress mode"},
		{"bad allow pattern", []string{"vm", "create", "x1", "--allow", "bad pattern"}, 1, `bad egress --allow pattern "bad pattern"`},
		{"allow without gateway", []string{"vm", "create", "x1", "--egress", "all", "--allow", "a.example"}, 1, "--allow needs the egress gateway"},
		{"bad credentials", []string{"vm", "create", "x1", "--credentials", "steal"}, 1, `unknown credentials mode "steal"`},
		{"egress of unknown vm", []string{"vm", "egress", "show", "ghost"}, 1, "no VM named"},
		{"unknown vmm", []string{"vm", "create", "x1", "--vmm", "kvmtool"}, 1, `unknown VMM "kvmtool"`},
		{"jailer under qemu", []string{"vm", "create", "x1", "--vmm", "qemu", "--jailer"}, 1, "--jailer is a Firecracker option"},
		// Without firecracker the create fails on the binary; with it, on
		// the network mode (Firecracker has no user networking).
		{"firecracker unavailable", []string{"vm", "create", "x1", "--vmm", "firecracker"}, 1, firecrackerRefusal()},
		{"bad flag", []string{"vm", "create", "x1", "--cpu", "2"}, 2, "unknown flag"},
		{"unknown vm", []string{"vm", "exec", "ghost", "--", "true"}, 125, "no VM named"},
		{"stop unknown", []string{"vm", "stop", "ghost"}, 1, "no VM named"},
		{"delete unknown image", []string{"image", "delete", "ghost"}, 1, "no image named"},
		{"watch unknown op", []string{"op", "watch", "nope"}, 1, "no operation"},
		{"exec without command", []string{"vm", "exec", "ghost"}, 2, "usage"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := in.run(nil, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want exit %d and %q, got %s", tc.code, tc.want, r)
			}
			if tc.code == 1 && !strings.Contains(r.stderr, "hint:") && !strings.Contains(tc.want, "unknown flag") {
				// Every daemon error says what to do.
				if !strings.Contains(tc.want, "no operation") {
					t.Fatalf("error without a hint: %s", r)
				}
			}
		})
	}

	t.Run("json errors", func(t *testing.T) {
		r := in.run(nil, "vm", "create", "Bad", "--json")
		var body struct {
			Error struct{ Message, Hint string }
		}
		if r.code != 1 || json.Unmarshal([]byte(r.stderr), &body) != nil || body.Error.Message == "" || body.Error.Hint == "" {
			t.Fatalf("--json error: %s", r)
		}
	})

	t.Run("raw socket", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", in.socket())
		}}}
		post := func(body []byte) (int, string) {
			resp, err := hc.Post("http://banger/v1/vms", "application/json", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		for _, body := range [][]byte{
			[]byte(`{"name":`),
			[]byte(`{"name":"ok1","cpus":"two"}`),
			[]byte(`{"name":"ok1","bogus":1}`),
			[]byte(`{"name":"ok1"} {"name":"ok2"}`),
			[]byte(``),
			append([]byte(`{"name":"`), append(bytes.Repeat([]byte("a"), 2<<20), []byte(`"}`)...)...),
		} {
			code, resp := post(body)
			if code != 400 || !strings.Contains(resp, `"error"`) {
				t.Fatalf("body %.40q: got %d %s", body, code, resp)
			}
		}
		st, err := os.Stat(in.socket())
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode: %v %v", st.Mode(), err)
		}
	})

	t.Run("duplicate and concurrent names", func(t *testing.T) {
		// Start a create without waiting, then ask for the same name again.
		r := in.must(t, "vm", "create", "dup1", "--egress", "none", "--no-wait")
		opID := strings.TrimSpace(r.stdout)
		r2 := in.run(nil, "vm", "create", "dup1", "--egress", "none")
		if r2.code != 1 || !(strings.Contains(r2.stderr, "being created") || strings.Contains(r2.stderr, "already exists")) {
			t.Fatalf("second create of a name in flight: %s", r2)
		}
		if w := in.run(nil, "op", "watch", opID); w.code != 0 {
			t.Fatalf("op watch: %s\n%s", w, in.daemonLog())
		}
		r3 := in.run(nil, "vm", "create", "dup1")
		if r3.code != 1 || !strings.Contains(r3.stderr, "already exists") {
			t.Fatalf("duplicate name: %s", r3)
		}
		// Deleting the image a VM uses is refused.
		img := in.vm(t, "dup1").Image
		if r := in.run(nil, "image", "delete", img); r.code != 1 || !strings.Contains(r.stderr, "used by") {
			t.Fatalf("delete image in use: %s", r)
		}
		in.must(t, "vm", "delete", "dup1")
	})

	if after := takeSnapshot(t, in); !before.equal(after) {
		t.Fatalf("bad input left something behind: before %+v after %+v", before, after)
	}
}

// TestFailedCreateCleansUp: a boot that misses its deadline fails the
// operation with the console tail, and leaves no VM row, disk, port or
// process.
func TestFailedCreateCleansUp(t *testing.T) {
	shared(t) // the image is imported from the shared cache
	in := newInstance(t, "[vm]\nboot_timeout = \"2s\"\n[daemon]\naccel = \"tcg\"\n")
	defer in.shutdown()
	in.expectRetries = true // a 2s deadline fails every boot; the daemon retries it once
	if err := ensureImage(t, in); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, in)
	r := in.run(nil, "vm", "create", "doomed", "--egress", "none")
	if r.code != 1 || !strings.Contains(r.stderr, "did not answer within 2s") {
		t.Fatalf("create with a 2s deadline: %s", r)
	}
	if !strings.Contains(r.stderr, "console tail") {
		t.Fatalf("failed boot does not show the console tail: %s", r)
	}
	opID := ""
	for _, line := range strings.Split(r.stderr, "\n") {
		if rest, ok := strings.CutPrefix(line, "creating VM (operation "); ok {
			opID = strings.TrimSuffix(rest, ")")
		}
	}
	op := in.run(nil, "op", "show", opID, "--json")
	if !strings.Contains(op.stdout, `"state": "failed"`) || !strings.Contains(op.stdout, "did not answer") {
		t.Fatalf("failed operation record: %s", op)
	}
	if l := in.must(t, "op", "list"); !strings.Contains(l.stdout, opID) || !strings.Contains(l.stdout, "failed") {
		t.Fatalf("op list lacks the failed create: %s", l.stdout)
	}
	if w := in.run(nil, "op", "watch", opID); w.code != 1 {
		t.Fatalf("op watch of a failed op must exit 1: %s", w)
	}
	if after := takeSnapshot(t, in); !before.equal(after) {
		t.Fatalf("failed create left something behind: before %+v after %+v", before, after)
	}
}

// TestNoDaemonNoImage: the CLI never starts a daemon and says how to; a
// daemon without images says how to get one.
func TestNoDaemonNoImage(t *testing.T) {
	requireVM(t)
	home, _ := os.MkdirTemp("/tmp", "bge")
	defer os.RemoveAll(home)
	ghost := &instance{t: t, home: home}
	r := ghost.run(nil, "vm", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "no banger daemon") || !strings.Contains(r.stderr, "banger daemon") {
		t.Fatalf("no daemon: %s", r)
	}
	if _, err := os.Stat(filepath.Join(home, "banger.sock")); err == nil {
		t.Fatalf("the CLI started a daemon by itself")
	}
	in := newInstance(t, "")
	defer in.shutdown()
	r = in.run(nil, "vm", "create", "x1")
	if r.code != 1 || !strings.Contains(r.stderr, "no image yet") || !strings.Contains(r.stderr, "banger image build") {
		t.Fatalf("create without image: %s", r)
	}
	d := in.run(nil, "doctor")
	if !strings.Contains(d.stdout, "qemu-system-x86_64") || !strings.Contains(d.stdout, "kvm") {
		t.Fatalf("doctor: %s", d)
	}
}

// firecrackerRefusal is what `vm create --vmm firecracker` (user
// networking) fails with on this host.
func firecrackerRefusal() string {
	if _, err := exec.LookPath("firecracker"); err != nil {
		return "firecracker not found in PATH"
	}
	return "Firecracker needs --net tap"
}
