package client

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHelperForeignServer is not a test: run by TestClientRefusesForeignServer
// as another user, it listens on the socket it is given and notes whether
// a client sent it anything.
func TestHelperForeignServer(t *testing.T) {
	sock := os.Getenv("BANGER_TEST_FOREIGN_SOCKET")
	if sock == "" {
		t.Skip("helper process only")
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o777)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			buf := make([]byte, 1)
			if n, _ := c.Read(buf); n > 0 {
				os.WriteFile(sock+".leaked", nil, 0o666)
			}
			c.Close()
		}()
	}
}

// A daemon socket served by a user who is neither root nor the caller is
// an impostor (someone squatted the runtime directory): the client hangs
// up before sending a byte, with an error that says so.
func TestClientRefusesForeignServer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a server as another user")
	}
	dir, err := os.MkdirTemp("", "bgpeer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "banger.sock")
	// The test binary sits in a directory only root reads: run a copy.
	bin := filepath.Join(dir, "helper")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestHelperForeignServer$")
	cmd.Env = append(os.Environ(), "BANGER_TEST_FOREIGN_SOCKET="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("helper server did not listen")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = New(sock).Version(ctx)
	if err == nil || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("client talked to a server of uid 65534: err %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(sock + ".leaked"); err == nil {
		t.Fatal("the client sent bytes to a server of another user")
	}
}
