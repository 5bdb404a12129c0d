package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables/expr"
	"github.com/hashicorp/yamux"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
	"github.com/bangerdev/banger/internal/agentclient"
)

func littleEndian(t testing.TB) {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the /proc/net fixtures are from a little-endian machine")
	}
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "egress", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFindSocketInode(t *testing.T) {
	littleEndian(t)
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		file          string
		local, remote netip.AddrPort
		want          uint64
	}{
		// The client's socket: local is what the agent sees as peer,
		// remote the original destination.
		{"proc_net_tcp", ap("10.0.2.15:50000"), ap("203.0.113.7:443"), 4242},
		// The agent's own accepted socket does not match.
		{"proc_net_tcp", ap("10.0.2.15:50000"), ap("127.0.0.1:15001"), 0},
		// TIME_WAIT (inode 0) never matches.
		{"proc_net_tcp", ap("10.0.2.15:50001"), ap("203.0.113.7:443"), 0},
		// A dual-stack socket shows IPv4 as IPv4-mapped.
		{"proc_net_tcp6", ap("[::ffff:10.0.2.15]:50016"), ap("[::ffff:203.0.113.7]:80"), 6161},
		{"proc_net_tcp6", ap("[fe80::5400:ff:fe00:1]:40000"), ap("[2001:db8::1]:443"), 7171},
		// UDP, remote unknown: the exact local address, else a socket
		// bound to any address on the port.
		{"proc_net_udp", ap("10.0.2.15:54322"), netip.AddrPort{}, 9191},
		{"proc_net_udp", ap("10.0.2.15:54321"), netip.AddrPort{}, 8181},
		{"proc_net_udp", ap("10.0.2.15:1"), netip.AddrPort{}, 0},
	} {
		got, ok := findSocketInode(fixture(t, tc.file), tc.local, tc.remote)
		if got != tc.want || ok != (tc.want != 0) {
			t.Errorf("%s %s→%s: inode %d %v, want %d", tc.file, tc.local, tc.remote, got, ok, tc.want)
		}
	}
}

// fakeProc builds a /proc with the fixtures and one process (pid 4321)
// holding socket 6161.
func fakeProc(t *testing.T, environ string) string {
	t.Helper()
	dir := t.TempDir()
	mk := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("net/tcp", fixture(t, "proc_net_tcp"))
	mk("net/tcp6", fixture(t, "proc_net_tcp6"))
	mk("net/udp", fixture(t, "proc_net_udp"))
	mk("4321/comm", []byte("curl\n"))
	mk("4321/environ", []byte(environ))
	mk("17/comm", []byte("other\n"))
	if err := os.MkdirAll(filepath.Join(dir, "4321/fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "17/fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	for fd, target := range map[string]string{"4321/fd/0": "/dev/null", "4321/fd/5": "socket:[6161]", "17/fd/3": "socket:[4242]"} {
		if err := os.Symlink(target, filepath.Join(dir, fd)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestAttribute(t *testing.T) {
	littleEndian(t)
	proc := fakeProc(t, "PATH=/bin\x00BANGER_SESSION=s-abc123\x00HOME=/root\x00")
	// An IPv4 connection made from a dual-stack socket is found in tcp6.
	got := attribute(proc, "tcp", netip.MustParseAddrPort("10.0.2.15:50016"), netip.MustParseAddrPort("203.0.113.7:80"), time.Second, nil)
	if got != (attribution{PID: 4321, Process: "curl", Session: "s-abc123"}) {
		t.Fatalf("attribution %+v", got)
	}
	got = attribute(proc, "tcp", netip.MustParseAddrPort("10.0.2.15:50000"), netip.MustParseAddrPort("203.0.113.7:443"), time.Second, nil)
	if got != (attribution{PID: 17, Process: "other"}) {
		t.Fatalf("attribution %+v", got)
	}
	// A hinted PID is looked at first (and a wrong hint costs nothing).
	got = attribute(proc, "tcp", netip.MustParseAddrPort("10.0.2.15:50016"), netip.MustParseAddrPort("203.0.113.7:80"), time.Second, []int{17, 4321, 99999})
	if got.PID != 4321 {
		t.Fatalf("hinted attribution %+v", got)
	}
	var r recentPIDs
	for _, p := range []int{1, 2, 3, 1, 0, 4, 5, 6, 7, 8, 9, 10} {
		r.add(p)
	}
	if got := r.list(); !slices.Equal(got, []int{10, 9, 8, 7, 6, 5, 4, 1}) {
		t.Fatalf("recent %v", got)
	}
	// No socket, or no time: unknown.
	if got := attribute(proc, "tcp", netip.MustParseAddrPort("10.0.2.15:1"), netip.MustParseAddrPort("203.0.113.7:443"), time.Second, nil); got.PID != 0 || got.miss == "" {
		t.Fatalf("attribution %+v", got)
	}
	if got := attribute(proc, "tcp", netip.MustParseAddrPort("10.0.2.15:50016"), netip.MustParseAddrPort("203.0.113.7:80"), -time.Second, nil); got.PID != 0 || got.miss == "" {
		t.Fatalf("attribution past the deadline %+v", got)
	}
}

func TestSessionFromEnviron(t *testing.T) {
	for in, want := range map[string]string{
		"A=1\x00BANGER_SESSION=abc-1\x00":            "abc-1",
		"BANGER_SESSION=abc":                         "abc",
		"XBANGER_SESSION=abc\x00":                    "",
		"BANGER_SESSION=\x00":                        "",
		"BANGER_SESSION=a b\x00":                     "",
		"BANGER_SESSION=\"x\"\x00":                   "",
		"BANGER_SESSION=" + strings.Repeat("a", 200): "",
	} {
		if got := sessionFromEnviron([]byte(in)); got != want {
			t.Errorf("sessionFromEnviron(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzProcNet: the /proc/net parser never panics on any input, and what
// it finds is a line's inode.
func FuzzProcNet(f *testing.F) {
	for _, n := range []string{"proc_net_tcp", "proc_net_tcp6", "proc_net_udp"} {
		f.Add(fixture(f, n), "10.0.2.15:50000", "203.0.113.7:443")
	}
	f.Add([]byte("0: 0:0 0:0 0 0 0 0 0 0 1\n"), "[::1]:1", "")
	f.Add([]byte("0: 0100007F:FFFFF 0:0 0 0 0 0 0 0 18446744073709551616\n"), "127.0.0.1:1", "")
	f.Fuzz(func(t *testing.T, data []byte, local, remote string) {
		l, _ := netip.ParseAddrPort(local)
		r, _ := netip.ParseAddrPort(remote)
		inode, ok := findSocketInode(data, l, r)
		if ok != (inode != 0) {
			t.Fatalf("inode %d ok %v", inode, ok)
		}
		for _, field := range strings.Fields(string(data)) {
			if ap, err := parseProcAddr(field); err == nil && !ap.IsValid() {
				t.Fatalf("parseProcAddr(%q) gave an invalid address without error", field)
			}
		}
		_ = sessionFromEnviron(data)
	})
}

// FuzzSockaddr: parseSockaddr never panics and only returns valid
// addresses.
func FuzzSockaddr(f *testing.F) {
	in4 := make([]byte, 16)
	binary.NativeEndian.PutUint16(in4, 2)
	copy(in4[2:], []byte{0x01, 0xbb, 203, 0, 113, 7})
	in6 := make([]byte, 28)
	binary.NativeEndian.PutUint16(in6, 10)
	in6[2], in6[3] = 0, 80
	in6[8], in6[9], in6[23] = 0x20, 0x01, 1
	f.Add(in4)
	f.Add(in6)
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := parseSockaddr(b)
		if err == nil && !ap.IsValid() {
			t.Fatalf("invalid address without error from %x", b)
		}
	})
}

func TestParseSockaddr(t *testing.T) {
	in4 := make([]byte, 20) // as getsockopt fills a larger buffer
	binary.NativeEndian.PutUint16(in4, 2)
	copy(in4[2:], []byte{0x01, 0xbb, 203, 0, 113, 7})
	if ap, err := parseSockaddr(in4); err != nil || ap != netip.MustParseAddrPort("203.0.113.7:443") {
		t.Fatalf("sockaddr_in: %v %v", ap, err)
	}
	in6 := make([]byte, 28)
	binary.NativeEndian.PutUint16(in6, 10)
	in6[2], in6[3] = 0, 80
	a := netip.MustParseAddr("2001:db8::1").As16()
	copy(in6[8:], a[:])
	if ap, err := parseSockaddr(in6); err != nil || ap != netip.MustParseAddrPort("[2001:db8::1]:80") {
		t.Fatalf("sockaddr_in6: %v %v", ap, err)
	}
	if _, err := parseSockaddr(in6[:20]); err == nil {
		t.Fatal("short sockaddr_in6 accepted")
	}
}

func TestEgressRules(t *testing.T) {
	var texts []string
	for _, r := range egressRules() {
		texts = append(texts, r.Text)
	}
	want := []string{
		"meta mark 0x62616e67 return",
		"meta l4proto udp udp dport 53 redirect to :15053",
		"meta l4proto tcp tcp dport 53 redirect to :15053",
		`oifname "lo" return`,
		"meta l4proto tcp redirect to :15001",
	}
	if strings.Join(texts, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(texts, "\n"), strings.Join(want, "\n"))
	}
	// The expressions say the same: every redirect loads its port
	// (big-endian) into the register the redir reads.
	ports := map[int]uint16{1: 15053, 2: 15053, 4: 15001}
	for i, r := range egressRules() {
		var imm *expr.Immediate
		var redir *expr.Redir
		var verdict *expr.Verdict
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Immediate:
				imm = e
			case *expr.Redir:
				redir = e
			case *expr.Verdict:
				verdict = e
			}
		}
		if p, ok := ports[i]; ok {
			if imm == nil || redir == nil || binary.BigEndian.Uint16(imm.Data) != p || redir.RegisterProtoMin != imm.Register {
				t.Errorf("rule %d (%s): immediate %+v redir %+v", i, r.Text, imm, redir)
			}
		} else if verdict == nil || verdict.Kind != expr.VerdictReturn {
			t.Errorf("rule %d (%s): verdict %+v", i, r.Text, verdict)
		}
	}
}

// streamPair is the agent channel in miniature: a yamux session each
// side of a pipe. open is the guest's stream opener.
func streamPair(t *testing.T) (open func() (net.Conn, error), host *yamux.Session) {
	t.Helper()
	a, b := net.Pipe()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	guest, err := yamux.Server(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	host, err = yamux.Client(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guest.Close(); host.Close() })
	var hs hostSessions
	hs.add(guest)
	return hs.open, host
}

// testEgress serves e's TCP and DNS listeners on 127.0.0.1 ports of the
// test's own, with a fixed original destination and attribution.
func testEgress(t *testing.T, open func() (net.Conn, error)) (e *Egress, tcpAddr, dnsAddr string, logs *syncBuffer) {
	t.Helper()
	logs = &syncBuffer{}
	e = NewEgress(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), open)
	e.origDst = func(net.Conn) (netip.AddrPort, error) { return netip.MustParseAddrPort("203.0.113.7:443"), nil }
	e.attribute = func(string, netip.AddrPort, netip.AddrPort) attribution {
		return attribution{PID: 42, Process: "curl", Session: "s1"}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// DNS takes one port for UDP and TCP; the kernel picks it for UDP,
	// and the same TCP port may be another socket's (tests of other
	// packages run at the same time): try again with another.
	var pc net.PacketConn
	var dln net.Listener
	for try := 0; ; try++ {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if dln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatal(err)
		}
	}
	go e.ServeTCP(ctx, ln)
	go e.ServeDNSUDP(ctx, pc)
	go e.ServeDNSTCP(ctx, dln)
	return e, ln.Addr().String(), pc.LocalAddr().String(), logs
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// acceptOpen takes the next guest stream on host and reads its open line.
func acceptOpen(t *testing.T, host *yamux.Session) (net.Conn, *bufio.Reader, agentapi.EgressOpen) {
	t.Helper()
	s, err := host.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(s)
	var open agentapi.EgressOpen
	if err := agentapi.ReadEgressLine(br, &open); err != nil {
		t.Fatal(err)
	}
	return s, br, open
}

func TestEgressTCPAllowed(t *testing.T) {
	open, host := streamPair(t)
	_, addr, _, _ := testEgress(t, open)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}

	s, br, o := acceptOpen(t, host)
	defer s.Close()
	if o != (agentapi.EgressOpen{Kind: "tcp", Dst: "203.0.113.7:443", PID: 42, Process: "curl", Session: "s1"}) {
		t.Fatalf("open line %+v", o)
	}
	// The client's bytes arrive before the host has answered: the host
	// sniffs them to decide.
	first := make([]byte, len(req))
	if _, err := io.ReadFull(br, first); err != nil || string(first) != req {
		t.Fatalf("first bytes %q %v", first, err)
	}
	if err := agentapi.WriteEgressLine(s, agentapi.EgressReply{Allow: true}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(s, "HTTP/1.1 200 OK\r\n\r\nhello")
	// Half-close both ways: the host's FIN reaches the client as EOF while
	// the client can still send.
	s.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "HTTP/1.1 200 OK\r\n\r\nhello" {
		t.Fatalf("client got %q %v", got, err)
	}
	io.WriteString(c, "late")
	c.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "late" {
		t.Fatalf("host got %q after the reply, %v", rest, err)
	}
}

func TestEgressTCPDenied(t *testing.T) {
	open, host := streamPair(t)
	_, addr, _, logs := testEgress(t, open)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")

	s, _, _ := acceptOpen(t, host)
	msg := `banger egress: evil.test:443 blocked by policy "agents" of VM "v1"`
	agentapi.WriteEgressLine(s, agentapi.EgressReply{Message: msg})
	io.WriteString(s, "HTTP/1.1 403 Forbidden\r\n\r\nblocked")
	s.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "HTTP/1.1 403 Forbidden\r\n\r\nblocked" {
		t.Fatalf("client got %q %v", got, err)
	}
	// The denial is in the journal, with who asked.
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(logs.String(), "egress denied") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{"egress denied", "evil.test:443 blocked", "process=curl", "session=s1"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// TestEgressNoHost: with no host connected a redirected connection
// closes at once instead of hanging.
func TestEgressNoHost(t *testing.T) {
	var hs hostSessions
	_, addr, dns, _ := testEgress(t, hs.open)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !(errors.Is(err, io.EOF) || isReset(err)) {
		t.Fatalf("read %d %v, want EOF", n, err)
	}
	// A dead session is no host either.
	open, host := streamPair(t)
	host.Close()
	if _, err := open(); err == nil {
		t.Fatal("stream opened on a closed session")
	}
	_ = dns
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "reset")
}

func TestEgressDNS(t *testing.T) {
	open, host := streamPair(t)
	_, _, dnsAddr, _ := testEgress(t, open)
	query := []byte("\x12\x34query-bytes")
	answer := []byte("\x12\x34answer-bytes")
	go func() {
		for {
			s, err := host.Accept()
			if err != nil {
				return
			}
			go func() {
				defer s.Close()
				br := bufio.NewReader(s)
				var o agentapi.EgressOpen
				if agentapi.ReadEgressLine(br, &o) != nil || o.Kind != agentapi.EgressKindDNS || o.Session != "s1" {
					return
				}
				q, err := readDNSFrame(br)
				if err != nil || !bytes.Equal(q, query) {
					return
				}
				writeDNSFrame(s, answer)
			}()
		}
	}()
	// UDP: one datagram each way.
	u, err := net.Dial("udp", dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(5 * time.Second))
	u.Write(query)
	buf := make([]byte, 512)
	n, err := u.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], answer) {
		t.Fatalf("udp answer %q %v", buf[:n], err)
	}
	// TCP: two length-prefixed queries on one connection.
	c, err := net.Dial("tcp", dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for range 2 {
		if err := writeDNSFrame(c, query); err != nil {
			t.Fatal(err)
		}
		got, err := readDNSFrame(c)
		if err != nil || !bytes.Equal(got, answer) {
			t.Fatalf("tcp answer %q %v", got, err)
		}
	}
}

// TestEgressDNSOversizedAnswer: an answer over the cap is dropped, not
// relayed (the host is trusted, but the cap is the contract).
func TestEgressDNSOversizedAnswer(t *testing.T) {
	open, host := streamPair(t)
	go func() {
		s, err := host.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		br := bufio.NewReader(s)
		var o agentapi.EgressOpen
		agentapi.ReadEgressLine(br, &o)
		readDNSFrame(br)
		s.Write([]byte{0xff, 0xff})
		s.Write(make([]byte, 0xffff))
	}()
	e := NewEgress(slog.New(slog.NewTextHandler(io.Discard, nil)), open)
	if _, err := e.queryDNS(context.Background(), []byte("q"), attribution{}); err == nil {
		t.Fatal("oversized answer accepted")
	}
}

func TestEgressSeed(t *testing.T) {
	root := t.TempDir()
	mk := func(rel, data string) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("etc/environment", "LANG=C.UTF-8\n")
	mk(opencodeUnit, "[Service]\n")
	var updates, reloads int
	opts := InitOptions{
		Root:          root,
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		UpdateCACerts: func() error { updates++; return nil },
		ReloadSystemd: func() error { reloads++; return nil },
	}
	ca := "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n"
	eg := &agentapi.SeedEgress{Gateway: true, CACert: ca, Env: map[string]string{
		"ANTHROPIC_API_KEY": "sk-ant-api03-banger-ph-abc",
		"BAD NAME":          "x",
		"QUOTED":            `"x"`,
	}}
	err := applyEgressSeed(opts, eg)
	if err == nil || !strings.Contains(err.Error(), `"BAD NAME"`) || !strings.Contains(err.Error(), "QUOTED") || strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("err %v", err)
	}
	read := func(rel string) string {
		b, _ := os.ReadFile(filepath.Join(root, rel))
		return string(b)
	}
	if read(EgressCACert) != ca || updates != 1 {
		t.Fatalf("CA %q, %d updates", read(EgressCACert), updates)
	}
	wantEnv := "LANG=C.UTF-8\n" + envBegin + "\nANTHROPIC_API_KEY=sk-ant-api03-banger-ph-abc\nNODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/banger-egress.crt\n" + envEnd + "\n"
	if got := read("etc/environment"); got != wantEnv {
		t.Fatalf("/etc/environment:\n%s\nwant:\n%s", got, wantEnv)
	}
	if !strings.Contains(read(egressDropIn), "EnvironmentFile=-/etc/environment") || reloads != 1 {
		t.Fatalf("drop-in %q, %d reloads", read(egressDropIn), reloads)
	}
	// Again: nothing changes, nothing reruns.
	eg.Env = map[string]string{"ANTHROPIC_API_KEY": "sk-ant-api03-banger-ph-abc"}
	if err := applyEgressSeed(opts, eg); err != nil || updates != 1 || reloads != 1 || read("etc/environment") != wantEnv {
		t.Fatalf("second apply: %v, %d updates %d reloads", err, updates, reloads)
	}
	// A seed without egress undoes it all.
	if err := applyEgressSeed(opts, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, EgressCACert)); !errors.Is(err, os.ErrNotExist) || updates != 2 {
		t.Fatalf("CA left behind (%v), %d updates", err, updates)
	}
	if read("etc/environment") != "LANG=C.UTF-8\n" {
		t.Fatalf("/etc/environment %q", read("etc/environment"))
	}
	if _, err := os.Stat(filepath.Join(root, egressDropIn)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("drop-in left behind")
	}
	// Not a certificate: refused.
	if err := applyEgressSeed(opts, &agentapi.SeedEgress{CACert: "junk"}); err == nil {
		t.Fatal("junk CA accepted")
	}
}

func TestEgressEnvInCommands(t *testing.T) {
	saved := maps.Clone(baseEnv)
	t.Cleanup(func() { baseEnv = saved })
	env, err := EgressEnv(&agentapi.SeedEgress{CACert: "x", Env: map[string]string{"OPENAI_API_KEY": "sk-banger-ph-1"}})
	if err != nil {
		t.Fatal(err)
	}
	SetEgressEnv(env)
	got := strings.Join(commandEnv(api.ExecRequest{Argv: []string{"true"}}), "\n")
	for _, want := range []string{"OPENAI_API_KEY=sk-banger-ph-1", "NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/banger-egress.crt"} {
		if !strings.Contains(got, want) {
			t.Fatalf("exec env lacks %s:\n%s", want, got)
		}
	}
}

// TestHostSessionsNewest: streams go to the newest live host session; a
// closed or forgotten one is skipped.
func TestHostSessionsNewest(t *testing.T) {
	var hs hostSessions
	pair := func() (guest, host *yamux.Session) {
		a, b := net.Pipe()
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		guest, _ = yamux.Server(a, cfg)
		host, _ = yamux.Client(b, cfg)
		t.Cleanup(func() { guest.Close(); host.Close() })
		return guest, host
	}
	g1, h1 := pair()
	g2, h2 := pair()
	hs.add(g1)
	forget2 := hs.add(g2)
	got := make(chan *yamux.Session, 4)
	for _, h := range []*yamux.Session{h1, h2} {
		go func() {
			for {
				if _, err := h.Accept(); err != nil {
					return
				}
				got <- h
			}
		}()
	}
	which := func() *yamux.Session {
		s, err := hs.open()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Write([]byte("x"))
		select {
		case h := <-got:
			return h
		case <-time.After(5 * time.Second):
			t.Fatal("no host accepted the stream")
			return nil
		}
	}
	if which() != h2 {
		t.Fatal("stream did not go to the newest session")
	}
	forget2()
	if which() != h1 {
		t.Fatal("stream did not go to the remaining session")
	}
	g1.Close()
	if _, err := hs.open(); !errors.Is(err, ErrNoHost) {
		t.Fatalf("open with only a closed session: %v", err)
	}
}

// dnsQuery is "example.test A" with RD and an EDNS OPT record.
var dnsQuery = []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" +
	"\x07example\x04test\x00\x00\x01\x00\x01" +
	"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")

func TestDNSErrorAnswer(t *testing.T) {
	got := dnsErrorAnswer(dnsQuery, dnsRcodeServFail)
	want := []byte("\x12\x34\x81\x82\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01")
	if !bytes.Equal(got, want) {
		t.Fatalf("answer %q\nwant   %q", got, want)
	}
	for _, bad := range [][]byte{nil, dnsQuery[:11], dnsQuery[:20], append([]byte("\x12\x34\x81\x00"), dnsQuery[4:]...)} {
		if a := dnsErrorAnswer(bad, dnsRcodeServFail); a != nil {
			t.Errorf("answer %q to %q", a, bad)
		}
	}
}

func FuzzDNSErrorAnswer(f *testing.F) {
	f.Add(dnsQuery)
	f.Add([]byte("\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f"))
	f.Fuzz(func(t *testing.T, q []byte) {
		a := dnsErrorAnswer(q, dnsRcodeNXDomain)
		if a != nil && (len(a) < 12 || len(a) > len(q) || a[2]&0x80 == 0 || a[3]&0x0f != dnsRcodeNXDomain) {
			t.Fatalf("answer %x to %x", a, q)
		}
	})
}

// TestEgressDNSNoHost: with no host a query fails at once (SERVFAIL)
// instead of leaving the resolver to time out.
func TestEgressDNSNoHost(t *testing.T) {
	var hs hostSessions
	_, _, dnsAddr, _ := testEgress(t, hs.open)
	u, err := net.Dial("udp", dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(2 * time.Second))
	u.Write(dnsQuery)
	buf := make([]byte, 512)
	n, err := u.Read(buf)
	if err != nil || n < 12 || buf[3]&0x0f != dnsRcodeServFail || buf[0] != 0x12 {
		t.Fatalf("answer %x %v", buf[:n], err)
	}
}

// TestEgressThroughAgentChannel: the whole guest side in process. A
// redirected client's connection becomes a stream the daemon's
// agentclient.AcceptStream takes, on the same session the agent serves
// HTTP on; after the host goes away, connections close at once; a new
// host gets the next ones.
func TestEgressThroughAgentChannel(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, addr, _, elog := testEgress(t, a.srv.OpenHostStream)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(elog.String())
		}
	})
	roundTrip := func(c *agentclient.Client) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, "ping")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := c.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		br := bufio.NewReader(s)
		var o agentapi.EgressOpen
		if err := agentapi.ReadEgressLine(br, &o); err != nil || o.Dst != "203.0.113.7:443" {
			t.Fatalf("open %+v %v", o, err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
			t.Fatalf("first bytes %q %v", b, err)
		}
		agentapi.WriteEgressLine(s, agentapi.EgressReply{Allow: true})
		io.WriteString(s, "pong")
		s.(interface{ CloseWrite() error }).CloseWrite()
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != "pong" {
			t.Fatalf("client got %q %v", got, err)
		}
	}
	roundTrip(c)

	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if errors.Is(err, io.EOF) || isReset(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with no host, a connection read %v", err)
		}
	}
	c = a.dial(t)
	// The agent registers the session right after the preamble that
	// Dial waits for; connections before that have no host.
	for deadline := time.Now().Add(5 * time.Second); ; {
		a.srv.hosts.mu.Lock()
		n := len(a.srv.hosts.list)
		a.srv.hosts.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new host session never registered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	roundTrip(c)
}
