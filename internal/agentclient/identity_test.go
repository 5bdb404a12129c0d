package agentclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/agentapi"
)

func TestIdentity(t *testing.T) {
	got := make(chan agentapi.IdentityRequest, 1)
	c, _ := fakeAgent(t, func(s net.Conn) {
		defer s.Close()
		req, err := http.ReadRequest(bufio.NewReader(s))
		if err != nil || req.Method != http.MethodPost || req.URL.Path != agentapi.AgentIdentityPath {
			io.WriteString(s, withBody("HTTP/1.1 404 Not Found", ""))
			return
		}
		var ir agentapi.IdentityRequest
		json.NewDecoder(req.Body).Decode(&ir)
		got <- ir
		io.WriteString(s, withBody("HTTP/1.1 200 OK\r\nContent-Type: application/json", `{"done":["hostname vm-2","sshd restarted"]}`))
		io.Copy(io.Discard, s)
	})
	sent := agentapi.IdentityRequest{Hostname: "vm-2", UnixNano: 42, Entropy: []byte{1, 2}, ResetConnections: true}
	reply, err := c.Identity(context.Background(), sent)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(reply.Done, ";") != "hostname vm-2;sshd restarted" {
		t.Fatalf("reply %q", reply.Done)
	}
	ir := <-got
	if ir.Hostname != "vm-2" || ir.UnixNano != 42 || string(ir.Entropy) != "\x01\x02" || !ir.ResetConnections {
		t.Fatalf("sent %+v", ir)
	}
}

func TestIdentityErrors(t *testing.T) {
	tests := []struct {
		name, raw string
		status    int
		code      string
		message   string
	}{
		{"refused", withBody("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json",
			`{"error":{"message":"identity request: invalid host name","code":"invalid"}}`), 400, api.CodeInvalid, "invalid host name"},
		{"step failed", withBody("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json",
			`{"error":{"message":"identity step sshd restart: boom","hint":"discard this VM","code":"internal"}}`), 500, api.CodeInternal, "sshd restart"},
		{"old agent", withBody("HTTP/1.1 404 Not Found\r\nContent-Type: application/json",
			`{"error":{"message":"no route POST /v1/identity","code":"not_found"}}`), 404, api.CodeNotFound, "no route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := fakeAgent(t, answer(tt.raw))
			_, err := c.Identity(context.Background(), agentapi.IdentityRequest{Hostname: "x"})
			var se *StatusError
			if !errors.As(err, &se) || se.StatusCode != tt.status || se.Err.Code != tt.code || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("err %v (%+v)", err, se)
			}
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatal("does not unwrap to *api.Error")
			}
		})
	}
	// A garbage 200 is an error, not an empty success.
	c, _ := fakeAgent(t, answer(withBody("HTTP/1.1 200 OK", "not json")))
	if _, err := c.Identity(context.Background(), agentapi.IdentityRequest{}); err == nil || !strings.Contains(err.Error(), "decode reply") {
		t.Fatalf("err %v", err)
	}
	// An agent that never answers is bounded by ctx.
	c, _ = fakeAgent(t, silent)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Identity(ctx, agentapi.IdentityRequest{}); err == nil {
		t.Fatal("no error")
	}
	// Too big to send: refused before it goes out.
	big := agentapi.IdentityRequest{AuthFiles: []agentapi.SeedFile{{Path: "a", Data: make([]byte, agentapi.MaxIdentityBody)}}}
	if _, err := c.Identity(context.Background(), big); err == nil || !strings.Contains(err.Error(), "over the agent's limit") {
		t.Fatalf("err %v", err)
	}
}
