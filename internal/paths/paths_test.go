package paths

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		uid  int
		want Layout
	}{
		{
			name: "BANGER_HOME wins for any uid",
			env:  map[string]string{"BANGER_HOME": "/tmp/bh/", "XDG_DATA_HOME": "/x", "HOME": "/home/u"},
			uid:  0,
			want: Layout{
				Home: "/tmp/bh", DataDir: "/tmp/bh", RunDir: "/tmp/bh/run",
				ConfigFile: "/tmp/bh/config.toml", Socket: "/tmp/bh/banger.sock",
				DBPath: "/tmp/bh/state.db", ImagesDir: "/tmp/bh/images", VMsDir: "/tmp/bh/vms",
				LogDir: "/tmp/bh/logs", SSHDir: "/tmp/bh/ssh", CacheDir: "/tmp/bh/cache",
			},
		},
		{
			name: "root",
			env:  map[string]string{"HOME": "/root", "XDG_RUNTIME_DIR": "/run/user/0"},
			uid:  0,
			want: Layout{
				Home: "/var/lib/banger", DataDir: "/var/lib/banger", RunDir: "/run/banger",
				ConfigFile: "/etc/banger/config.toml", Socket: "/run/banger/banger.sock",
				DBPath: "/var/lib/banger/state.db", ImagesDir: "/var/lib/banger/images",
				VMsDir: "/var/lib/banger/vms", LogDir: "/var/lib/banger/logs",
				SSHDir: "/var/lib/banger/ssh", CacheDir: "/var/lib/banger/cache",
			},
		},
		{
			name: "user with XDG",
			env: map[string]string{
				"HOME": "/home/u", "XDG_DATA_HOME": "/d", "XDG_CONFIG_HOME": "/c", "XDG_RUNTIME_DIR": "/run/user/1000",
			},
			uid: 1000,
			want: Layout{
				Home: "/d/banger", DataDir: "/d/banger", RunDir: "/run/user/1000/banger",
				ConfigFile: "/c/banger/config.toml", Socket: "/run/user/1000/banger/banger.sock",
				DBPath: "/d/banger/state.db", ImagesDir: "/d/banger/images", VMsDir: "/d/banger/vms",
				LogDir: "/d/banger/logs", SSHDir: "/d/banger/ssh", CacheDir: "/d/banger/cache",
			},
		},
		{
			name: "user without XDG",
			env:  map[string]string{"HOME": "/home/u"},
			uid:  1000,
			want: Layout{
				Home: "/home/u/.local/share/banger", DataDir: "/home/u/.local/share/banger",
				RunDir: "/tmp/banger-1000", ConfigFile: "/home/u/.config/banger/config.toml",
				Socket: "/tmp/banger-1000/banger.sock", DBPath: "/home/u/.local/share/banger/state.db",
				ImagesDir: "/home/u/.local/share/banger/images", VMsDir: "/home/u/.local/share/banger/vms",
				LogDir: "/home/u/.local/share/banger/logs", SSHDir: "/home/u/.local/share/banger/ssh",
				CacheDir: "/home/u/.local/share/banger/cache",
			},
		},
		{
			name: "relative values are ignored",
			env: map[string]string{
				"BANGER_HOME": "rel", "HOME": "/home/u", "XDG_DATA_HOME": "d", "XDG_CONFIG_HOME": "c", "XDG_RUNTIME_DIR": "r",
			},
			uid: 1000,
			want: Layout{
				Home: "/home/u/.local/share/banger", DataDir: "/home/u/.local/share/banger",
				RunDir: "/tmp/banger-1000", ConfigFile: "/home/u/.config/banger/config.toml",
				Socket: "/tmp/banger-1000/banger.sock", DBPath: "/home/u/.local/share/banger/state.db",
				ImagesDir: "/home/u/.local/share/banger/images", VMsDir: "/home/u/.local/share/banger/vms",
				LogDir: "/home/u/.local/share/banger/logs", SSHDir: "/home/u/.local/share/banger/ssh",
				CacheDir: "/home/u/.local/share/banger/cache",
			},
		},
		{
			name: "no HOME at all",
			env:  map[string]string{},
			uid:  1001,
			want: Layout{
				Home: "/tmp/banger-1001/data/banger", DataDir: "/tmp/banger-1001/data/banger",
				RunDir: "/tmp/banger-1001", ConfigFile: "/tmp/banger-1001/config/banger/config.toml",
				Socket: "/tmp/banger-1001/banger.sock", DBPath: "/tmp/banger-1001/data/banger/state.db",
				ImagesDir: "/tmp/banger-1001/data/banger/images", VMsDir: "/tmp/banger-1001/data/banger/vms",
				LogDir: "/tmp/banger-1001/data/banger/logs", SSHDir: "/tmp/banger-1001/data/banger/ssh",
				CacheDir: "/tmp/banger-1001/data/banger/cache",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Resolve(envOf(tt.env), tt.uid); got != tt.want {
				t.Fatalf("Resolve:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	tests := []struct {
		name string
		flag string
		env  map[string]string
		uid  int
		want string
	}{
		{"flag first", "/f.sock", map[string]string{"BANGER_SOCKET": "/e.sock", "BANGER_HOME": "/h"}, 1000, "/f.sock"},
		{"env second", "", map[string]string{"BANGER_SOCKET": "/e.sock", "BANGER_HOME": "/h"}, 1000, "/e.sock"},
		{"BANGER_HOME third", "", map[string]string{"BANGER_HOME": "/h", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/h/banger.sock"},
		{"root", "", map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, 0, "/run/banger/banger.sock"},
		{"user", "", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/banger/banger.sock"},
		{"user without runtime dir", "", map[string]string{"HOME": "/home/u"}, 1000, "/tmp/banger-1000/banger.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SocketPath(tt.flag, envOf(tt.env), tt.uid); got != tt.want {
				t.Fatalf("SocketPath = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSocketAgreesWithResolve(t *testing.T) {
	// The daemon listens on Resolve().Socket and the CLI dials
	// SocketPath(); they must never disagree.
	envs := []map[string]string{
		{"BANGER_HOME": "/h"},
		{"XDG_RUNTIME_DIR": "/run/user/7"},
		{"HOME": "/home/x"},
		{},
	}
	for _, e := range envs {
		for _, uid := range []int{0, 7} {
			if a, b := SocketPath("", envOf(e), uid), Resolve(envOf(e), uid).Socket; a != b {
				t.Errorf("env %v uid %d: SocketPath %q != Resolve().Socket %q", e, uid, a, b)
			}
		}
	}
}

func TestDirsAndPrefix(t *testing.T) {
	l := Resolve(envOf(map[string]string{"BANGER_HOME": "/tmp/a"}), 1000)
	if got := l.VMDir("abc"); got != "/tmp/a/vms/abc" {
		t.Errorf("VMDir = %q", got)
	}
	if got := l.ImageDir("deb12"); got != "/tmp/a/images/deb12" {
		t.Errorf("ImageDir = %q", got)
	}
	p := l.InstancePrefix()
	if len(p) != 8 || !strings.HasPrefix(p, "bg") {
		t.Errorf("InstancePrefix = %q, want bg + 6 hex", p)
	}
	if p != l.InstancePrefix() {
		t.Error("InstancePrefix is not stable")
	}
	other := Resolve(envOf(map[string]string{"BANGER_HOME": "/tmp/b"}), 1000)
	if other.InstancePrefix() == p {
		t.Error("two instances share a prefix")
	}
}

func TestCheckID(t *testing.T) {
	for _, id := range []string{"vm-1", "0123abcd", "deb12.v2"} {
		if err := CheckID(id); err != nil {
			t.Errorf("CheckID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "a/b", "../x", "a\x00", `a\b`} {
		if err := CheckID(id); !errors.Is(err, ErrBadID) {
			t.Errorf("CheckID(%q) = %v, want ErrBadID", id, err)
		}
	}
}

func TestCheckSocketPath(t *testing.T) {
	tests := []struct {
		n       int
		wantErr bool
	}{{10, false}, {107, false}, {108, true}, {300, true}}
	for _, tt := range tests {
		p := "/" + strings.Repeat("a", tt.n-1)
		err := CheckSocketPath(p)
		if (err != nil) != tt.wantErr {
			t.Errorf("len %d: err = %v", tt.n, err)
		}
		if err != nil && (!errors.Is(err, ErrSocketPathTooLong) || !strings.Contains(err.Error(), "BANGER_HOME")) {
			t.Errorf("len %d: err %q lacks sentinel or hint", tt.n, err)
		}
	}
}

func TestEnsureDirs(t *testing.T) {
	home := filepath.Join(t.TempDir(), "instance")
	l := Resolve(envOf(map[string]string{"BANGER_HOME": home}), 1000)
	for range 2 { // idempotent
		if err := EnsureDirs(l); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{l.DataDir, l.RunDir, l.ImagesDir, l.VMsDir, l.LogDir, l.SSHDir, l.CacheDir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want drwx------", d, fi.Mode())
		}
	}
	if _, err := os.Stat(l.ConfigFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("EnsureDirs created the config file: %v", err)
	}

	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := EnsureDirs(Resolve(envOf(map[string]string{"BANGER_HOME": blocker}), 1000)); err == nil {
		t.Error("EnsureDirs under a regular file succeeded")
	}
}

// The runtime directory holds the daemon's socket. Under /tmp another user
// can create it first and put a socket of their own in it; a directory
// that is a link, someone else's, or open to others is refused, with what
// to do, and nothing is created through it.
func TestEnsureDirsRefusesSquattedRunDir(t *testing.T) {
	uid := os.Getuid()
	layoutWithRun := func(run string) Layout {
		l := layoutUnder(filepath.Join(t.TempDir(), "data"))
		l.RunDir = run
		l.Socket = filepath.Join(run, FileSocket)
		return l
	}
	// A fresh one is created private.
	fresh := filepath.Join(t.TempDir(), "banger-fresh")
	if err := EnsureDirs(layoutWithRun(fresh)); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(fresh); err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Fatalf("fresh run dir: %v %v", fi, err)
	}

	target := t.TempDir()
	link := filepath.Join(t.TempDir(), "banger-link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(t.TempDir(), "banger-open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{"symlink": link, "mode 0777": open}
	if uid == 0 {
		other := filepath.Join(t.TempDir(), "banger-other")
		if err := os.Mkdir(other, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		cases["owned by uid 4242"] = other
	}
	for name, dir := range cases {
		err := EnsureDirs(layoutWithRun(dir))
		if err == nil {
			t.Errorf("%s: run dir accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "remove it") {
			t.Errorf("%s: error does not name the directory and what to do: %v", name, err)
		}
	}
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Errorf("something was created through the link: %v", entries)
	}
}
