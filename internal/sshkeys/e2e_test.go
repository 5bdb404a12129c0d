package sshkeys

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// serveSSH runs a minimal in-process SSH server that accepts only
// clientPub and answers every exec request with "ran: <command>".
func serveSSH(t *testing.T, hostPriv, clientPub []byte) int {
	t.Helper()
	hostSigner, err := ssh.ParsePrivateKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	allowed, _, _, _, err := ssh.ParseAuthorizedKey(clientPub)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), allowed.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unauthorized")
		},
	}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handleSSHConn(c, cfg)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func handleSSHConn(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go func() {
			defer ch.Close()
			for r := range creqs {
				if r.Type != "exec" {
					r.Reply(false, nil)
					continue
				}
				r.Reply(true, nil)
				var cmd string
				if len(r.Payload) >= 4 {
					n := binary.BigEndian.Uint32(r.Payload)
					if int(n) <= len(r.Payload)-4 {
						cmd = string(r.Payload[4 : 4+n])
					}
				}
				ch.Write([]byte("ran: " + cmd + "\n"))
				ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 0))
				return
			}
		}()
	}
}

// TestSSHArgsWithOpenSSH drives the real ssh client with SSHArgs against
// a pinned host key: the right key connects, a swapped one is refused.
func TestSSHArgsWithOpenSSH(t *testing.T) {
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("ssh client not installed")
	}
	dir := t.TempDir()
	keyPath, clientPub, err := EnsureClientKey(filepath.Join(dir, "ssh"))
	if err != nil {
		t.Fatal(err)
	}
	hostPriv, hostPub, err := GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	port := serveSSH(t, hostPriv, clientPub)
	known := filepath.Join(dir, "known_hosts")

	run := func(t *testing.T) (string, error) {
		args := SSHArgs(SSHOpts{
			Port: port, KeyFile: keyPath, KnownHostsFile: known, HostKeyAlias: "banger-test",
			TTY: TTYNone, Command: []string{"echo", "hi"},
		})
		// Keep the machine's ssh_config out of the test.
		args = append([]string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"}, args...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, sshBin, args...).CombinedOutput()
		return string(out), err
	}

	if err := WriteKnownHosts(known, "banger-test", hostPub); err != nil {
		t.Fatal(err)
	}
	out, err := run(t)
	if err != nil {
		t.Fatalf("ssh with pinned key failed: %v: %s", err, out)
	}
	if out != "ran: echo hi\n" {
		t.Fatalf("ssh output %q", out)
	}

	_, otherPub, err := GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKnownHosts(known, "banger-test", otherPub); err != nil {
		t.Fatal(err)
	}
	out, err = run(t)
	if err == nil {
		t.Fatalf("ssh accepted an unpinned host key: %s", out)
	}
	if !strings.Contains(out, "Host key verification failed") && !strings.Contains(out, "HOST IDENTIFICATION HAS CHANGED") {
		t.Fatalf("ssh failed for another reason: %v: %s", err, out)
	}
}
