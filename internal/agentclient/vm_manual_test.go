//go:build manualvm

package agentclient

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/mux"
)

func TestManualVM(t *testing.T) {
	img := os.Getenv("BANGER_VM_IMAGE")
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	os.Mkdir(seed, 0o700)
	sh := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	sh("go", "build", "-o", filepath.Join(seed, "banger-agent"), "../../cmd/banger-agent")
	os.WriteFile(filepath.Join(seed, "config.json"), []byte(`{"hostname":"agenttest"}`), 0o600)
	sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(img, "rootfs.ext4"), "-F", "raw", filepath.Join(dir, "root.qcow2"))
	sh("truncate", "-s", "32M", filepath.Join(dir, "seed.ext4"))
	sh("mkfs.ext4", "-q", "-F", "-L", "bangerseed", "-d", seed, filepath.Join(dir, "seed.ext4"))
	sh("truncate", "-s", "64M", filepath.Join(dir, "work.ext4"))
	sh("mkfs.ext4", "-q", "-F", "-L", "bangerwork", filepath.Join(dir, "work.ext4"))
	sock := filepath.Join(dir, "agent.sock")
	q := exec.Command("qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "file:"+filepath.Join(dir, "console.log"),
		"-kernel", filepath.Join(img, "vmlinuz"), "-initrd", filepath.Join(img, "initrd.img"),
		"-drive", "id=root,file="+filepath.Join(dir, "root.qcow2")+",format=qcow2,if=none", "-device", "virtio-blk-device,drive=root",
		"-drive", "id=seed,file="+filepath.Join(dir, "seed.ext4")+",format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=seed",
		"-drive", "id=work,file="+filepath.Join(dir, "work.ext4")+",format=raw,if=none", "-device", "virtio-blk-device,drive=work",
		"-device", "virtio-serial-device", "-chardev", "socket,path="+sock+",server=on,wait=off,id=agent",
		"-device", "virtserialport,chardev=agent,name=banger.agent",
		"-append", "console=ttyS0 root=LABEL=bangerroot rw panic=-1 quiet net.ifnames=0 tsc_early_khz=2000000", "-no-reboot")
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := WaitReady(ctx, dial, 3*time.Second)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		t.Fatalf("%v\n%s", err, b)
	}
	exe := func(argv ...string) string {
		conn, err := c.Exec(ctx, api.ExecRequest{Argv: argv})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var out bytes.Buffer
		if _, err := mux.RunExec(ctx, conn, nil, &out, &out, nil, nil); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	for i := range 10 {
		if _, err := c.Exec(ctx, api.ExecRequest{Argv: []string{"sleep", "999"}}); err != nil {
			t.Fatalf("rapid %d: %v", i, err)
		}
		c.Close()
		t0 := time.Now()
		if c, err = WaitReady(ctx, dial, 3*time.Second); err != nil {
			t.Fatalf("rapid %d: %v", i, err)
		}
		t.Logf("reconnect %d after %s", i, time.Since(t0))
	}
	time.Sleep(300 * time.Millisecond)
	t.Logf("leftover sleeps: %q", exe("sh", "-c", "pgrep -a sleep || echo none"))
	t.Logf("agent log: %s", exe("sh", "-c", "journalctl -u banger-agent --no-pager | tail -5"))
}
