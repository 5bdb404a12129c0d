package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// TestExtraSerialPorts: the benchmark-only raw ports take plain names and
// never the agent's.
func TestExtraSerialPorts(t *testing.T) {
	for _, p := range [][]string{{"bench"}, {"a.b-1", "x"}} {
		c := Default()
		c.VM.ExtraSerialPorts = p
		if err := c.Validate(); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"", "banger.agent", "a,b", "a b", "../x", "A", strings.Repeat("x", 40)} {
		c := Default()
		c.VM.ExtraSerialPorts = []string{p}
		if err := c.Validate(); err == nil {
			t.Errorf("accepted port name %q", p)
		}
	}
}

func TestDefaultIsValid(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{
		VM:          VM{CPUs: 2, MemoryMiB: 1024, DiskGiB: 4, Egress: "allow", Net: "user", BootTimeout: Duration{180 * time.Second}, VMM: "auto", ExtraSerialPorts: []string{}},
		Image:       Image{Suite: "bookworm", Mirror: "http://deb.debian.org/debian", SecurityMirror: "http://deb.debian.org/debian-security", ReadySnapshot: true},
		Daemon:      Daemon{LogLevel: "info"},
		Auth:        Auth{Files: []string{".local/share/opencode/auth.json", ".claude/.credentials.json", ".claude.json", ".pi/agent/auth.json"}},
		Firecracker: Firecracker{UID: 65534, GID: 65534, ChrootBase: "/srv/jailer", ParentCgroup: "banger", Cgroups: []string{}, CgroupVersion: "2"},
		Network:     Network{Subnet: "172.30.0.0/24", DNS: []string{}},
		VMMProcess:  VMMProcess{UIDRange: "2000000000-2000065535"},
		Limits:      Limits{ConsoleLogMiB: 8, GuestStreamMiB: 4096, MinFreeMiB: 256, MaxConnections: 256},
		Egress:      Egress{DefaultPolicy: "agents", Resolve: map[string]string{}, LogMaxRows: 5000, Policies: map[string]EgressPolicy{}},
		Credentials: Credentials{Mode: "broker", Env: []string{"ANTHROPIC_API_KEY", "OPENAI_API_KEY"}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("Default() = %+v", d)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		check   func(Config) bool
		wantErr []string // substrings; nil means success
		wantIs  error
	}{
		{name: "empty", in: "", check: func(c Config) bool { return reflect.DeepEqual(c, Default()) }},
		{
			name: "partial keeps defaults",
			in:   "[vm]\ncpus = 4\nboot_timeout = \"3m\"\n[daemon]\naccel = \"tcg\"\n",
			check: func(c Config) bool {
				return c.VM.CPUs == 4 && c.VM.MemoryMiB == 1024 && c.VM.BootTimeout.Duration == 3*time.Minute &&
					c.Daemon.Accel == "tcg" && c.Image.Suite == "bookworm"
			},
		},
		{
			name: "everything",
			in: `[vm]
cpus = 64
memory_mib = 128
disk_gib = 1
egress = "none"
boot_timeout = "1s"
[image]
suite = "trixie"
mirror = "https://mirror.example/debian"
security_mirror = "https://mirror.example/debian-security"
[daemon]
log_level = "debug"
accel = "kvm"
agent_path = "/opt/banger/banger-agent"
`,
			check: func(c Config) bool {
				return c.VM.CPUs == 64 && c.VM.Egress == "none" && c.Image.Suite == "trixie" &&
					c.Daemon.AgentPath == "/opt/banger/banger-agent"
			},
		},
		{name: "unknown key", in: "[vm]\ncpu = 4\n", wantErr: []string{`"vm.cpu"`, "vm.cpus"}, wantIs: ErrUnknownKey},
		{name: "unknown table reported once", in: "[netwerk]\nmode = \"tap\"\nbridge = \"br0\"\n", wantErr: []string{`unknown config key "netwerk";`}, wantIs: ErrUnknownKey},
		{name: "tap network", in: "[vm]\nnet = \"tap\"\n[network]\nsubnet = \"10.20.0.0/16\"\ndns = [\"192.0.2.53\"]\n",
			check: func(c Config) bool {
				return c.VM.Net == "tap" && c.Network.Subnet == "10.20.0.0/16" && c.Network.DNS[0] == "192.0.2.53"
			}},
		{name: "bad network", in: "[vm]\nnet = \"bridge\"\n[network]\nsubnet = \"172.30.0.1/24\"\ndns = [\"dns.example\"]\n",
			wantErr: []string{"vm.net", "network.subnet", "did you mean 172.30.0.0/24", "network.dns"}, wantIs: ErrInvalid},
		{name: "unknown top-level key", in: "cpus = 2\n", wantErr: []string{`"cpus"`}, wantIs: ErrUnknownKey},
		{name: "cpus zero", in: "[vm]\ncpus = 0\n", wantErr: []string{"vm.cpus = 0", "1 to 64"}, wantIs: ErrInvalid},
		{name: "cpus too many", in: "[vm]\ncpus = 65\n", wantErr: []string{"vm.cpus = 65"}, wantIs: ErrInvalid},
		{name: "memory", in: "[vm]\nmemory_mib = 64\n", wantErr: []string{"vm.memory_mib = 64", "at least 128"}, wantIs: ErrInvalid},
		{name: "disk", in: "[vm]\ndisk_gib = 0\n", wantErr: []string{"vm.disk_gib = 0"}, wantIs: ErrInvalid},
		{name: "egress", in: "[vm]\negress = \"some\"\n", wantErr: []string{`vm.egress = "some"`, `"all", "none" or "allow"`}, wantIs: ErrInvalid},
		{
			name: "egress section",
			in: `[egress]
default_policy = "work"
resolve = {"api.anthropic.com" = "127.0.0.1:18443", "mirror.example:80" = "127.0.0.1:8080"}
upstream_ca_file = "/etc/banger/test-ca.pem"
log_max_rows = 100
[egress.policy.work]
allow = ["github.com:443", "*.npmjs.org", "192.0.2.0/24"]
deny = ["gist.github.com"]
[egress.policy.agents]
allow = ["api.anthropic.com"]
[credentials]
mode = "copy"
env = ["MY_KEY"]
`,
			check: func(c Config) bool {
				set := c.Egress.PolicySet()
				return c.Egress.DefaultPolicy == "work" && c.Egress.Resolve["mirror.example:80"] == "127.0.0.1:8080" &&
					c.Egress.LogMaxRows == 100 && reflect.DeepEqual(set["work"].Deny, []string{"gist.github.com"}) &&
					reflect.DeepEqual(set["agents"].Allow, []string{"api.anthropic.com"}) &&
					c.Credentials.Mode == "copy" && c.Credentials.Env[0] == "MY_KEY"
			},
		},
		{name: "egress bad pattern", in: "[egress.policy.work]\nallow = [\"ok.example\", \"bad pattern\"]\ndeny = [\"x.example:99999\"]\n",
			wantErr: []string{`egress.policy.work.allow = "bad pattern"`, `egress.policy.work.deny = "x.example:99999"`, "*.suffix"}, wantIs: ErrInvalid},
		{name: "egress unknown policy key", in: "[egress.policy.work]\nalow = [\"x.example\"]\n", wantErr: []string{`"egress.policy.work.alow"`}, wantIs: ErrUnknownKey},
		{name: "egress bad policy name", in: "[egress.policy.all]\nallow = []\n", wantErr: []string{`egress.policy = "all"`}, wantIs: ErrInvalid},
		{name: "egress unknown default", in: "[egress]\ndefault_policy = \"nope\"\n", wantErr: []string{`egress.default_policy = "nope"`, "agents"}, wantIs: ErrInvalid},
		{name: "egress resolve", in: "[egress]\nresolve = {\"a.example\" = \"localhost:1\", \"b.example:x\" = \"127.0.0.1:1\"}\n",
			wantErr: []string{`egress.resolve.a.example = "localhost:1"`, `egress.resolve = "b.example:x"`}, wantIs: ErrInvalid},
		{name: "egress misc", in: "[egress]\nupstream_ca_file = \"ca.pem\"\nlog_max_rows = 0\n[credentials]\nmode = \"steal\"\nenv = [\"A=B\"]\n",
			wantErr: []string{"egress.upstream_ca_file", "egress.log_max_rows", "credentials.mode", `credentials.env = "A=B"`}, wantIs: ErrInvalid},
		{name: "duration syntax", in: "[vm]\nboot_timeout = \"soon\"\n", wantErr: []string{"vm.boot_timeout", `"soon"`, "180s"}},
		{name: "duration bare number", in: "[vm]\nboot_timeout = 180\n", wantErr: []string{"vm.boot_timeout", "180s"}},
		{name: "duration not positive", in: "[vm]\nboot_timeout = \"0s\"\n", wantErr: []string{"vm.boot_timeout", "positive"}, wantIs: ErrInvalid},
		{name: "idle park default never", in: "", check: func(c Config) bool { return c.VM.IdlePark.Duration == 0 }},
		{name: "idle park", in: "[vm]\nidle_park = \"30m\"\n", check: func(c Config) bool { return c.VM.IdlePark.Duration == 30*time.Minute }},
		{name: "idle park empty", in: "[vm]\nidle_park = \"\"\n", check: func(c Config) bool { return c.VM.IdlePark.Duration == 0 }},
		{name: "idle park zero", in: "[vm]\nidle_park = \"0\"\n", check: func(c Config) bool { return c.VM.IdlePark.Duration == 0 }},
		{name: "idle park syntax", in: "[vm]\nidle_park = \"soon\"\n", wantErr: []string{"vm.idle_park", `"soon"`, "3m"}},
		{name: "idle park negative", in: "[vm]\nidle_park = \"-5m\"\n", wantErr: []string{"vm.idle_park", "never park"}, wantIs: ErrInvalid},
		{name: "empty duration where a positive one is needed", in: "[vm]\nboot_timeout = \"\"\n", wantErr: []string{"vm.boot_timeout", "positive"}, wantIs: ErrInvalid},
		{name: "accel", in: "[daemon]\naccel = \"hvf\"\n", wantErr: []string{`daemon.accel = "hvf"`, `"tcg" or "kvm"`}, wantIs: ErrInvalid},
		{name: "log level", in: "[daemon]\nlog_level = \"loud\"\n", wantErr: []string{"daemon.log_level"}, wantIs: ErrInvalid},
		{
			name: "auth",
			in:   "[auth]\nhome = \"/home/dev\"\nfiles = [\".config/x/token\"]\n",
			check: func(c Config) bool {
				return c.Auth.Home == "/home/dev" && reflect.DeepEqual(c.Auth.Files, []string{".config/x/token"})
			},
		},
		{name: "auth home relative", in: "[auth]\nhome = \"dev\"\n", wantErr: []string{"auth.home"}, wantIs: ErrInvalid},
		{name: "auth file escapes", in: "[auth]\nfiles = [\"../etc/shadow\", \"/abs\", \".ssh/id_ed25519\"]\n", wantErr: []string{`"../etc/shadow"`, `"/abs"`, `".ssh/id_ed25519"`}, wantIs: ErrInvalid},
		{name: "agent path relative", in: "[daemon]\nagent_path = \"bin/agent\"\n", wantErr: []string{"daemon.agent_path"}, wantIs: ErrInvalid},
		{name: "limits", in: "[limits]\nconsole_log_mib = 1\nguest_stream_mib = 64\nmin_free_mib = 0\nmax_connections = 8\n",
			check: func(c Config) bool {
				return c.Limits == Limits{ConsoleLogMiB: 1, GuestStreamMiB: 64, MinFreeMiB: 0, MaxConnections: 8}
			}},
		{name: "limits invalid", in: "[limits]\nconsole_log_mib = 0\nguest_stream_mib = -1\nmin_free_mib = -1\nmax_connections = 0\n",
			wantErr: []string{"limits.console_log_mib", "limits.guest_stream_mib", "limits.min_free_mib", "limits.max_connections"}, wantIs: ErrInvalid},
		{name: "mirror", in: "[image]\nmirror = \"ftp://x\"\n", wantErr: []string{"image.mirror"}, wantIs: ErrInvalid},
		{name: "suite", in: "[image]\nsuite = \"../x\"\n", wantErr: []string{"image.suite"}, wantIs: ErrInvalid},
		{name: "wrong type", in: "[vm]\ncpus = \"two\"\n", wantErr: []string{"vm.cpus"}},
		{name: "syntax", in: "[vm\n", wantErr: []string{"parse: toml: line"}},
		{
			name:    "all problems at once",
			in:      "[vm]\ncpus = 0\nmemory_mib = 1\n",
			wantErr: []string{"vm.cpus", "vm.memory_mib"},
			wantIs:  ErrInvalid,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !tt.check(c) {
					t.Fatalf("unexpected config %+v", c)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	c, err := Load(filepath.Join(dir, "missing.toml"))
	if err != nil || !reflect.DeepEqual(c, Default()) {
		t.Fatalf("missing file: %+v, %v", c, err)
	}
	if c, err := Load(""); err != nil || !reflect.DeepEqual(c, Default()) {
		t.Fatalf("empty path: %+v, %v", c, err)
	}

	p := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(p, []byte("[vm]\nmemory_mib = 2048\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Load(p)
	if err != nil || c.VM.MemoryMiB != 2048 {
		t.Fatalf("Load = %+v, %v", c, err)
	}

	if err := os.WriteFile(p, []byte("[vm]\nmemroy_mib = 2048\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "vm.memroy_mib") {
		t.Fatalf("unknown key error %v must name the file and the key", err)
	}

	// A directory is not "missing": it is an error.
	if _, err := Load(dir); err == nil {
		t.Fatal("loading a directory succeeded")
	}
}

func TestKnownKeysMatchSchema(t *testing.T) {
	// Every key KnownKeys lists must decode, so the error hint is true.
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(Default()); err != nil {
		t.Fatal(err)
	}
	var m map[string]map[string]any
	if _, err := toml.Decode(b.String(), &m); err != nil {
		t.Fatal(err)
	}
	n := 0
	for table, kv := range m {
		for k := range kv {
			n++
			if !strings.Contains(strings.Join(KnownKeys(), " "), table+"."+k) {
				t.Errorf("key %s.%s missing from KnownKeys", table, k)
			}
		}
	}
	if n != len(KnownKeys()) {
		t.Errorf("encoded %d keys, KnownKeys has %d", n, len(KnownKeys()))
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("[vm]\ncpus = 4\nboot_timeout = \"3m\"\n"))
	f.Add([]byte("[image]\nmirror = \"https://m/debian\"\n[daemon]\naccel = \"kvm\"\n"))
	f.Add([]byte("[vm]\ncpu = 4\n"))
	f.Add([]byte("[[vm]]\n"))
	f.Add([]byte("vm = 3\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid config: %v", err)
		}
		// What parsed must survive a round trip through the encoder.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encode: %v", err)
		}
		c2, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("reparse %q: %v", buf.String(), err)
		}
		if !reflect.DeepEqual(c2, c) {
			t.Fatalf("round trip changed config:\n%+v\n%+v", c, c2)
		}
	})
}

func TestVMMAndFirecrackerKeys(t *testing.T) {
	c, err := Parse([]byte("[vm]\nvmm = \"firecracker\"\n[firecracker]\njailer = true\nuid = 1000\ngid = 1000\ncgroups = [\"cpu.max=200000 100000\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.VM.VMM != "firecracker" || !c.Firecracker.Jailer || c.Firecracker.UID != 1000 || c.Firecracker.ChrootBase != "/srv/jailer" {
		t.Fatalf("parsed %+v", c)
	}
	for _, bad := range []string{
		"[vm]\nvmm = \"kvmtool\"\n",
		"[firecracker]\nbinary = \"firecracker\"\n",
		"[firecracker]\nchroot_base = \"srv\"\n",
		"[firecracker]\ncgroups = [\"nonsense\"]\n",
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: got %v, want ErrInvalid", bad, err)
		}
	}
}

func TestUIDRange(t *testing.T) {
	c, err := Parse([]byte("[vmm]\nuid_range = \"3000000-3000009\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.VMMProcess.UIDs(); r.First != 3000000 || r.Last != 3000009 || !r.Contains(3000009) || r.Contains(2999999) || r.String() != "3000000-3000009" {
		t.Fatalf("uid range = %+v", r)
	}
	if r := Default().VMMProcess.UIDs(); r.First != 2000000000 || r.Last != 2000065535 {
		t.Fatalf("default uid range = %+v", r)
	}
	// Empty turns per-VM users off.
	c, err = Parse([]byte("[vmm]\nuid_range = \"\"\n"))
	if err != nil || !c.VMMProcess.UIDs().Empty() {
		t.Fatalf("empty range: %+v %v", c.VMMProcess.UIDs(), err)
	}
	for _, bad := range []string{
		"0-100",                 // root and system users
		"1000-70000",            // regular users
		"65534-70000",           // nobody
		"70000-60000",           // reversed
		"3000000000-3000000001", // above 2^31
		"2147483647-2147483647", // (uid_t)-1 / 2
		"abc", "100", "-5", "5-", "1-2-3",
	} {
		_, err := Parse([]byte("[vmm]\nuid_range = \"" + bad + "\"\n"))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "vmm.uid_range") {
			t.Errorf("uid_range %q: %v", bad, err)
		}
	}
}
