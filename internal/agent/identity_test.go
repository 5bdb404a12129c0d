package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/agentclient"
)

// fakeSys records what applying an identity did to the "running guest"
// and fails the steps named in fail.
type fakeSys struct {
	root string

	mu       sync.Mutex
	calls    []string
	hostname string
	clock    int64
	entropy  []byte
	noCredit bool
	conns    int
	skip     string
	fail     map[string]error
}

func newFakeSys(t *testing.T) *fakeSys {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc/ssh", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1\tlocalhost\n127.0.1.1\tparent\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("parent\n"), 0o644)
	// The image's empty, read-only machine-id.
	os.WriteFile(filepath.Join(root, machineIDFile), nil, 0o444)
	return &fakeSys{root: root, fail: map[string]error{}}
}

func (f *fakeSys) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.fail[call]
}

func (f *fakeSys) sys() identitySys {
	return identitySys{
		root: f.root,
		setHostname: func(name string) error {
			f.hostname = name
			return f.record("sethostname")
		},
		setClock: func(ns int64) error {
			f.clock = ns
			return f.record("clock")
		},
		addEntropy: func(b []byte) (bool, error, error) {
			f.entropy = append([]byte(nil), b...)
			if err := f.record("entropy"); err != nil {
				return false, nil, err
			}
			if f.noCredit {
				return false, errors.New("RNDADDENTROPY: operation not permitted"), nil
			}
			return true, nil, nil
		},
		restartSSH: func(context.Context) error { return f.record("sshd") },
		resetConnections: func(context.Context) (int, string, error) {
			return f.conns, f.skip, f.record("connections")
		},
	}
}

func (f *fakeSys) read(t *testing.T, rel string) (string, os.FileMode) {
	t.Helper()
	p := filepath.Join(f.root, rel)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	return string(b), st.Mode().Perm()
}

func identityAgent(t *testing.T, f *fakeSys) *agentclient.Client {
	t.Helper()
	a := startAgentWith(t, func(s *Server) { s.identity = f.sys() })
	return a.dial(t)
}

// postIdentity sends a raw body to the handler and returns the status
// and the decoded error, if any.
func postIdentity(t *testing.T, f *fakeSys, body io.Reader) (int, *api.Error) {
	t.Helper()
	s := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.identity = f.sys()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, agentapi.AgentIdentityPath, body))
	if rec.Code == http.StatusOK {
		return rec.Code, nil
	}
	var eb api.ErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error == nil {
		t.Fatalf("status %d, body %q", rec.Code, rec.Body.String())
	}
	return rec.Code, eb.Error
}

const testMachineID = "0123456789abcdef0123456789abcdef"

func TestIdentityApplies(t *testing.T) {
	f := newFakeSys(t)
	f.conns = 3
	// The snapshot's keys: an rsa key the new identity does not replace
	// must not survive (every sibling has it).
	os.WriteFile(filepath.Join(f.root, "etc/ssh/ssh_host_rsa_key"), []byte("old"), 0o600)
	os.WriteFile(filepath.Join(f.root, "etc/ssh/ssh_host_rsa_key.pub"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(f.root, "etc/ssh/ssh_host_ed25519_key"), []byte("old"), 0o600)
	key, pub := ed25519PEM(t)
	entropy := bytes.Repeat([]byte{7}, 2*maxCreditedEntropy)
	when := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := identityAgent(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := c.Identity(ctx, agentapi.IdentityRequest{
		Hostname:         "child-1",
		SSHHostKeys:      map[string]string{"ed25519": key},
		MachineID:        testMachineID,
		UnixNano:         when.UnixNano(),
		Entropy:          entropy,
		AuthFiles:        []agentapi.SeedFile{{Path: ".config/tool/auth.json", Data: []byte(`{"token":"child"}`)}},
		ResetConnections: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"clock", "entropy", "sethostname", "sshd", "connections"}; strings.Join(f.calls, ",") != strings.Join(want, ",") {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}
	if len(reply.Done) != 8 {
		t.Fatalf("done %q", reply.Done)
	}
	for i, prefix := range []string{"clock set to 2030-01-02T03:04:05Z", "entropy: 512 bytes mixed in and credited",
		"hostname child-1", "machine-id set", "ssh host keys: ed25519 (removed the snapshot's rsa)", "sshd restarted",
		"auth files: 1 written", "connections: 3 established"} {
		if !strings.HasPrefix(reply.Done[i], prefix) {
			t.Errorf("done[%d] = %q, want prefix %q", i, reply.Done[i], prefix)
		}
	}
	for _, d := range reply.Done {
		if strings.Contains(d, "PRIVATE") || strings.Contains(d, testMachineID) || strings.Contains(d, "child\"") {
			t.Errorf("reply leaks a secret: %q", d)
		}
	}
	if f.clock != when.UnixNano() || f.hostname != "child-1" {
		t.Fatalf("clock %d hostname %q", f.clock, f.hostname)
	}
	if !bytes.Equal(f.entropy, entropy[:maxCreditedEntropy]) {
		t.Fatalf("entropy: %d bytes", len(f.entropy))
	}
	if got, _ := f.read(t, "etc/hostname"); got != "child-1\n" {
		t.Fatalf("hostname file %q", got)
	}
	if got, _ := f.read(t, "etc/hosts"); !strings.Contains(got, "127.0.1.1\tchild-1\n") || strings.Contains(got, "parent") {
		t.Fatalf("hosts %q", got)
	}
	if got, mode := f.read(t, machineIDFile); got != testMachineID+"\n" || mode != 0o444 {
		t.Fatalf("machine-id %q %o", got, mode)
	}
	if got, mode := f.read(t, "etc/ssh/ssh_host_ed25519_key"); got != key || mode != 0o600 {
		t.Fatalf("host key mode %o, replaced %v", mode, got == key)
	}
	if got, _ := f.read(t, "etc/ssh/ssh_host_ed25519_key.pub"); !strings.HasPrefix(got, pub.Type()) {
		t.Fatalf("host key pub %q", got)
	}
	for _, gone := range []string{"etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub"} {
		if _, err := os.Stat(filepath.Join(f.root, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived: %v", gone, err)
		}
	}
	if got, mode := f.read(t, "root/.config/tool/auth.json"); got != `{"token":"child"}` || mode != 0o600 {
		t.Fatalf("auth file %q %o", got, mode)
	}
}

// A waking parked VM gets only the clock and entropy; nothing else moves.
func TestIdentityPartial(t *testing.T) {
	f := newFakeSys(t)
	f.noCredit = true
	f.skip = "this guest has no ss (iproute2)"
	c := identityAgent(t, f)
	reply, err := c.Identity(context.Background(), agentapi.IdentityRequest{UnixNano: 1, Entropy: []byte{1, 2, 3}, ResetConnections: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"clock set to 1970-01-01T00:00:00Z", "entropy: 3 bytes mixed in, not credited (RNDADDENTROPY: operation not permitted)",
		"connections: not reset (this guest has no ss (iproute2))"}
	if len(reply.Done) != len(want) {
		t.Fatalf("done %q", reply.Done)
	}
	for i := range want {
		if !strings.HasPrefix(reply.Done[i], want[i]) {
			t.Errorf("done[%d] = %q, want %q", i, reply.Done[i], want[i])
		}
	}
	if got, _ := f.read(t, "etc/hostname"); got != "parent\n" {
		t.Fatalf("hostname changed: %q", got)
	}
	if f.hostname != "" {
		t.Fatal("kernel host name set")
	}

	// An empty request is valid and does nothing.
	f.calls = nil
	reply, err = c.Identity(context.Background(), agentapi.IdentityRequest{})
	if err != nil || len(reply.Done) != 0 || reply.Done == nil || len(f.calls) != 0 {
		t.Fatalf("empty request: %q %v calls %v", reply.Done, err, f.calls)
	}
}

func TestIdentityStepFailure(t *testing.T) {
	f := newFakeSys(t)
	f.fail["sshd"] = errors.New("systemctl restart ssh.service: exit status 1: Job failed")
	key, _ := ed25519PEM(t)
	c := identityAgent(t, f)
	_, err := c.Identity(context.Background(), agentapi.IdentityRequest{
		Hostname: "child-2", SSHHostKeys: map[string]string{"ed25519": key}, ResetConnections: true,
		AuthFiles: []agentapi.SeedFile{{Path: "token", Data: []byte("t")}},
	})
	var se *agentclient.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusInternalServerError || se.Err.Code != api.CodeInternal {
		t.Fatalf("err %v", err)
	}
	for _, want := range []string{"identity step sshd restart", "after: hostname child-2; ssh host keys: ed25519", "Job failed"} {
		if !strings.Contains(se.Err.Message, want) {
			t.Errorf("message %q lacks %q", se.Err.Message, want)
		}
	}
	if strings.Contains(se.Err.Message, "PRIVATE") {
		t.Fatal("message leaks the key")
	}
	if se.Err.Hint == "" {
		t.Error("no hint")
	}
	// Steps after the failed one did not run.
	if strings.Join(f.calls, ",") != "sethostname,sshd" {
		t.Fatalf("calls %v", f.calls)
	}
	if _, err := os.Stat(filepath.Join(f.root, "root/token")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("auth files written after the failure")
	}
}

// The work disk is the guest's: a link planted in /root must not carry
// an auth file out of it.
func TestIdentityAuthFileThroughLink(t *testing.T) {
	f := newFakeSys(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(f.root, "root/.config")); err != nil {
		t.Fatal(err)
	}
	code, ae := postIdentity(t, f, strings.NewReader(`{"auth_files":[{"path":".config/auth.json","data":"c2VjcmV0"}]}`))
	if code != http.StatusInternalServerError || !strings.Contains(ae.Message, "identity step auth files") {
		t.Fatalf("%d %+v", code, ae)
	}
	if strings.Contains(ae.Message, "secret") {
		t.Fatal("message leaks the file")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("wrote outside /root: %v", entries)
	}
}

func TestIdentityRefused(t *testing.T) {
	key, _ := ed25519PEM(t)
	keyJSON, _ := json.Marshal(key)
	tests := []struct {
		name, body, want string
	}{
		{"empty body", ``, "empty request body"},
		{"not json", `{"hostname":`, "malformed"},
		{"unknown field", `{"hostname":"a","mac":"x"}`, "unknown field"},
		{"trailing", `{} {}`, "trailing data"},
		{"bad hostname", `{"hostname":"-bad"}`, "invalid host name"},
		{"hostname with newline", `{"hostname":"a\nb"}`, "invalid host name"},
		{"long hostname", `{"hostname":"` + strings.Repeat("a", 65) + `"}`, "invalid host name"},
		{"machine id upper", `{"machine_id":"0123456789ABCDEF0123456789ABCDEF"}`, "machine id"},
		{"machine id short", `{"machine_id":"0123"}`, "machine id"},
		{"machine id zero", `{"machine_id":"` + strings.Repeat("0", 32) + `"}`, "machine id"},
		{"negative clock", `{"unix_nano":-1}`, "before 1970"},
		{"key type", `{"ssh_host_keys":{"../../x":` + string(keyJSON) + `}}`, "unknown key type"},
		{"key mismatch", `{"ssh_host_keys":{"rsa":` + string(keyJSON) + `}}`, "holds a ssh-ed25519 key"},
		{"key garbage", `{"ssh_host_keys":{"ed25519":"SECRETSTUFF"}}`, "ssh host key ed25519"},
		{"auth escape", `{"auth_files":[{"path":"../etc/shadow","data":""}]}`, "inside /root"},
		{"auth absolute", `{"auth_files":[{"path":"/etc/shadow","data":""}]}`, "inside /root"},
		{"auth ssh", `{"auth_files":[{"path":".ssh/authorized_keys","data":""}]}`, "inside /root"},
		{"auth too big", `{"auth_files":[{"path":"a","data":"` + strings.Repeat("A", 4*(maxAuthFileBytes/3+4)) + `"}]}`, "larger than"},
		{"entropy not base64", `{"entropy":"!!"}`, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSys(t)
			code, ae := postIdentity(t, f, strings.NewReader(tt.body))
			if code != http.StatusBadRequest || ae.Code != api.CodeInvalid || !strings.Contains(ae.Message, tt.want) {
				t.Fatalf("%d %+v, want 400 with %q", code, ae, tt.want)
			}
			if strings.Contains(ae.Message, "SECRETSTUFF") || strings.Contains(ae.Message, "PRIVATE KEY") {
				t.Fatalf("message leaks the request: %q", ae.Message)
			}
			if len(f.calls) != 0 {
				t.Fatalf("a refused request acted: %v", f.calls)
			}
			if got, _ := f.read(t, "etc/hostname"); got != "parent\n" {
				t.Fatal("a refused request wrote files")
			}
		})
	}
	// Over the size cap (a valid JSON prefix that never ends in time).
	f := newFakeSys(t)
	big := `{"auth_files":[{"path":"a","data":"` + strings.Repeat("A", agentapi.MaxIdentityBody) + `"}]}`
	code, ae := postIdentity(t, f, strings.NewReader(big))
	if code != http.StatusBadRequest || !strings.Contains(ae.Message, "larger than") {
		t.Fatalf("%d %+v", code, ae)
	}
}

func TestValidMachineID(t *testing.T) {
	for id, want := range map[string]bool{
		testMachineID:                        true,
		"ffffffffffffffffffffffffffffffff":   true,
		strings.Repeat("0", 32):              false,
		"0123456789abcdef0123456789abcde":    false,
		"0123456789abcdef0123456789abcdef0":  false,
		"0123456789abcdeg0123456789abcdef":   false,
		"0123456789abcdef0123456789abcdeF":   false,
		"0123456789abcdef0123456789abcde\n":  false,
		"":                                   false,
		"01234567-89ab-cdef-0123-456789abcd": false,
	} {
		if got := validMachineID(id); got != want {
			t.Errorf("validMachineID(%q) = %v", id, got)
		}
	}
}

func TestRandPoolInfo(t *testing.T) {
	b := randPoolInfo([]byte{1, 2, 3})
	if len(b) != 11 || binary.NativeEndian.Uint32(b) != 24 || binary.NativeEndian.Uint32(b[4:]) != 3 || !bytes.Equal(b[8:], []byte{1, 2, 3}) {
		t.Fatalf("%v", b)
	}
}

// addEntropy on this machine: credited as root, mixed in otherwise. It
// only adds bytes to the pool, which is harmless.
func TestAddEntropy(t *testing.T) {
	credited, why, err := addEntropy(bytes.Repeat([]byte{0x5a}, 16))
	if err != nil {
		t.Fatal(err)
	}
	if !credited && why == nil {
		t.Fatal("not credited and no reason")
	}
	t.Logf("credited %v (%v)", credited, why)
}

func TestSSHRestartCommand(t *testing.T) {
	root := t.TempDir()
	if _, err := sshRestartCommand(root); err == nil {
		t.Fatal("no service manager: want an error")
	}
	os.MkdirAll(filepath.Join(root, "etc/sv/sshd"), 0o755)
	if argv, err := sshRestartCommand(root); err != nil || strings.Join(argv, " ") != "sv restart sshd" {
		t.Fatalf("runit: %v %v", argv, err)
	}
	os.MkdirAll(filepath.Join(root, "run/systemd/system"), 0o755)
	if argv, err := sshRestartCommand(root); err != nil || strings.Join(argv, " ") != "systemctl restart ssh.service" {
		t.Fatalf("systemd: %v %v", argv, err)
	}
}

func TestWriteMachineIDReplacesReadOnly(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, machineIDFile), []byte("ffffffffffffffffffffffffffffffff\n"), 0o444)
	if err := writeMachineID(root, testMachineID); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(root, machineIDFile))
	if string(b) != testMachineID+"\n" {
		t.Fatalf("%q", b)
	}
}

func TestCountLines(t *testing.T) {
	for out, want := range map[string]int{"": 0, "\n": 0, "a\n": 1, "a\nb\n": 2, "a\n\nb": 2} {
		if got := countLines([]byte(out)); got != want {
			t.Errorf("countLines(%q) = %d", out, got)
		}
	}
}

// The filter must parse in the ss the images ship (iproute2 6.1 on
// bookworm); listing without -K changes nothing.
func TestResetFilterParses(t *testing.T) {
	ss, err := exec.LookPath("ss")
	if err != nil {
		t.Skip("no ss on this machine")
	}
	if _, err := runGuestCommand(context.Background(), ss, "-t", "-n", "-H", "state", "established", resetFilter); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeIdentityRequest feeds hostile bodies to the decoder: it must
// not panic, every error is an invalid-input *api.Error, and whatever it
// accepts is safe to apply.
func FuzzDecodeIdentityRequest(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"hostname":"vm-1","machine_id":"0123456789abcdef0123456789abcdef","unix_nano":1,"entropy":"AAEC","reset_connections":true}`,
		`{"auth_files":[{"path":"a/b","data":"eA=="}]}`, `{"auth_files":[{"path":"../x"}]}`, `{"ssh_host_keys":{"ed25519":"x"}}`,
		`{"hostname":"a","hostname":"b"}`, `{"unix_nano":1e30}`, `[]`, `null`, `{"auth_files":null}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeIdentityRequest(bytes.NewReader(b))
		if err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeInvalid {
				t.Fatalf("error %v is not invalid input", err)
			}
			return
		}
		if req.Hostname != "" && !validHostname(req.Hostname) {
			t.Fatalf("accepted host name %q", req.Hostname)
		}
		if req.MachineID != "" && !validMachineID(req.MachineID) {
			t.Fatalf("accepted machine id %q", req.MachineID)
		}
		if req.UnixNano < 0 {
			t.Fatalf("accepted clock %d", req.UnixNano)
		}
		for _, af := range req.AuthFiles {
			if !ValidAuthPath(af.Path) || len(af.Data) > maxAuthFileBytes {
				t.Fatalf("accepted auth path %q", af.Path)
			}
		}
		for typ := range req.SSHHostKeys {
			if _, ok := hostKeyTypes[typ]; !ok {
				t.Fatalf("accepted key type %q", typ)
			}
		}
	})
}

// TestResetConnectionsInNetns runs the real reset in a private network
// namespace (root only), where the only sockets are the test's own: a
// connection to a non-loopback address is reset, a loopback one kept.
func TestResetConnectionsInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("no ss on this machine")
	}
	// The thread stays in the namespace and dies with this goroutine
	// (never unlocked); children forked from it (ip, ss) inherit it.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare network namespace: %v", err)
	}
	for _, argv := range [][]string{{"ip", "link", "set", "lo", "up"}, {"ip", "addr", "add", "10.99.0.1/32", "dev", "lo"}} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Skipf("%v: %v: %s", argv, err, out)
		}
	}
	pair := func(addr string) net.Conn {
		ln, err := net.Listen("tcp", addr+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); a.Close() })
		return c
	}
	local, other := pair("127.0.0.1"), pair("10.99.0.1")
	n, skipped, err := resetConnections(context.Background())
	if err != nil || skipped != "" || n == 0 {
		t.Fatalf("reset: n=%d skipped=%q err=%v", n, skipped, err)
	}
	other.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := other.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) && !errors.Is(err, unix.ECONNABORTED) {
		t.Fatalf("non-loopback connection: read %v, want a reset", err)
	}
	local.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := local.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("loopback connection: read %v, want it kept", err)
	}
}
