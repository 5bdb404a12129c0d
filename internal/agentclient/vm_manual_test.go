//go:build manualvm

package agentclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/mux"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestManualVM(t *testing.T) {
	img := os.Getenv("BANGER_VM_IMAGE")
	dir, _ := os.MkdirTemp("/tmp", "agentvm")
	t.Logf("dir %s", dir)
	seed := filepath.Join(dir, "seed")
	os.Mkdir(seed, 0o700)
	cmd := exec.Command("go", "build", "-o", filepath.Join(seed, "banger-agent"), "-ldflags", "-X github.com/bangerdev/banger/internal/buildinfo.Version=manual", "../../cmd/banger-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	blk, _ := ssh.MarshalPrivateKey(priv, "")
	cfg, _ := json.Marshal(api.SeedConfig{Hostname: "agenttest", SSHHostKeys: map[string]string{"ed25519": string(pem.EncodeToMemory(blk))}, AuthorizedKeys: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbYcQXBUqzK5MFkQ0v7pbuE0Ujz/HjfK4qWnRSwQ3Nm test"})
	os.WriteFile(filepath.Join(seed, "config.json"), cfg, 0o600)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(img, "rootfs.ext4"), "-F", "raw", filepath.Join(dir, "root.qcow2"))
	run(t, "truncate", "-s", "32M", filepath.Join(dir, "seed.ext4"))
	run(t, "mkfs.ext4", "-q", "-F", "-L", "bangerseed", "-d", seed, filepath.Join(dir, "seed.ext4"))
	run(t, "truncate", "-s", "64M", filepath.Join(dir, "work.ext4"))
	run(t, "mkfs.ext4", "-q", "-F", "-L", "bangerwork", filepath.Join(dir, "work.ext4"))
	sock := filepath.Join(dir, "agent.sock")
	console, _ := os.Create(filepath.Join(dir, "console.log"))
	q := exec.Command("qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-kernel", filepath.Join(img, "vmlinuz"), "-initrd", filepath.Join(img, "initrd.img"),
		"-drive", "id=root,file="+filepath.Join(dir, "root.qcow2")+",format=qcow2,if=none", "-device", "virtio-blk-device,drive=root",
		"-drive", "id=seed,file="+filepath.Join(dir, "seed.ext4")+",format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=seed",
		"-drive", "id=work,file="+filepath.Join(dir, "work.ext4")+",format=raw,if=none", "-device", "virtio-blk-device,drive=work",
		"-device", "virtio-serial-device",
		"-chardev", "socket,path="+sock+",server=on,wait=off,id=agent",
		"-device", "virtserialport,chardev=agent,name=banger.agent",
		"-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0",
		"-append", "console=ttyS0 root=LABEL=bangerroot rw panic=-1 quiet systemd.show_status=0 net.ifnames=0 tsc_early_khz=2000000 banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3",
		"-no-reboot")
	q.Stdout, q.Stderr = console, console
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := WaitReady(ctx, dial, 3*time.Second)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		t.Fatalf("%v\n%s", err, b)
	}
	t.Logf("agent ready after %s", time.Since(t0))
	h, err := c.Health(ctx)
	t.Logf("health %+v %v", h, err)
	exe := func(c *Client, req api.ExecRequest, stdin io.Reader) (string, api.ExitStatus) {
		conn, err := c.Exec(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var out bytes.Buffer
		st, err := mux.RunExec(ctx, conn, stdin, &out, &out, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return out.String(), st
	}
	out, st := exe(c, api.ExecRequest{Argv: []string{"sh", "-c", "hostname; cat /etc/hosts; ls -l /etc/ssh/ssh_host_*; ls -ld /root/.ssh /root/.ssh/authorized_keys; cat /run/systemd/network/10-banger.network; cat /etc/resolv.conf; ip -4 addr show eth0; systemctl is-active ssh banger-init banger-agent; tty || true"}}, nil)
	t.Logf("exec %+v:\n%s", st, out)
	out, st = exe(c, api.ExecRequest{Argv: []string{"tty"}, TTY: true}, nil)
	t.Logf("tty %+v: %q", st, out)
	out, st = exe(c, api.ExecRequest{Argv: []string{"nope"}}, nil)
	t.Logf("nope %+v: %q", st, out)

	// Reconnects, like daemon restarts.
	for i := range 3 {
		c.Close()
		t1 := time.Now()
		c, err = WaitReady(ctx, dial, 3*time.Second)
		if err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
		h2, err := c.Health(ctx)
		if err != nil || h2.BootID != h.BootID {
			t.Fatalf("reconnect %d: %+v %v", i, h2, err)
		}
		t.Logf("reconnect %d after %s", i, time.Since(t1))
	}
	// Immediate redial, no pause at all.
	c.Close()
	conn, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, _ = New(conn)
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = c.Health(hctx)
	hcancel()
	t.Logf("immediate redial health: %v", err)
	if err != nil {
		c.Close()
		c, err = WaitReady(ctx, dial, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
	}

	// An exec whose client goes away dies with it.
	econn, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sleep", "1234"}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	c.Close()
	c, err = WaitReady(ctx, dial, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = econn
	time.Sleep(500 * time.Millisecond)
	out, st = exe(c, api.ExecRequest{Argv: []string{"sh", "-c", "pgrep -a sleep || echo no sleep"}}, nil)
	t.Logf("after client loss: %q", out)

	// Throughput.
	t2 := time.Now()
	econn, err = c.Exec(ctx, api.ExecRequest{Argv: []string{"head", "-c", "209715200", "/dev/zero"}})
	if err != nil {
		t.Fatal(err)
	}
	var n countWriter
	st, err = mux.RunExec(ctx, econn, nil, &n, io.Discard, nil, nil)
	econn.Close()
	t.Logf("200 MiB: %d bytes in %s (%+v %v)", n, time.Since(t2), st, err)
	t3 := time.Now()
	out, st = exe(c, api.ExecRequest{Argv: []string{"sh", "-c", "wc -c"}, Stdin: true}, io.LimitReader(zeroReader{}, 50<<20))
	t.Logf("50 MiB up: %q in %s", strings.TrimSpace(out), time.Since(t3))
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }
