package agentclient

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

// recordRequests answers every stream with raw and reports the requests.
func recordRequests(got chan<- string, raw string) func(s net.Conn) {
	return func(s net.Conn) {
		defer s.Close()
		req, err := http.ReadRequest(bufio.NewReader(s))
		if err != nil {
			return
		}
		b, _ := io.ReadAll(req.Body)
		got <- req.Method + " " + req.URL.RequestURI() + " " + string(b)
		io.WriteString(s, raw)
		io.Copy(io.Discard, s)
	}
}

// The session routes and bodies on the wire are what the agent serves
// (internal/agent/sessions.go; its tests run them against a real agent).
func TestSessionRequestsOnTheWire(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan string, 1)
	session := `{"id":"abc","name":"web","command":"npm","cwd":"/root","mode":"pipe","state":"running","started_at":"2026-01-01T00:00:00Z"}`
	tests := []struct {
		name string
		raw  string
		call func(c *Client) error
		want string
	}{
		{"start", withStatus("201 Created", session), func(c *Client) error {
			s, err := c.StartSession(ctx, api.StartSessionRequest{Name: "web", Argv: []string{"npm", "start"}})
			if err == nil && (s.ID != "abc" || s.State != api.SessionRunning) {
				t.Errorf("session %+v", s)
			}
			return err
		}, `POST /v1/sessions {"name":"web","argv":["npm","start"]}`},
		{"list", withStatus("200 OK", "["+session+"]"), func(c *Client) error {
			ss, err := c.ListSessions(ctx)
			if err == nil && len(ss) != 1 {
				t.Errorf("sessions %+v", ss)
			}
			return err
		}, `GET /v1/sessions `},
		{"get", withStatus("200 OK", session), func(c *Client) error { _, err := c.GetSession(ctx, "web"); return err }, `GET /v1/sessions/web `},
		{"signal", withStatus("200 OK", session), func(c *Client) error { _, err := c.SignalSession(ctx, "web", 2); return err }, `POST /v1/sessions/web/signal {"signal":2}`},
		{"stop", withStatus("200 OK", session), func(c *Client) error { _, err := c.StopSession(ctx, "web", 1500*time.Millisecond); return err }, `POST /v1/sessions/web/stop {"timeout_seconds":1.5}`},
		{"remove", "HTTP/1.1 204 No Content\r\n\r\n", func(c *Client) error { return c.RemoveSession(ctx, "web") }, `DELETE /v1/sessions/web `},
		{"logs", withStatus("200 OK", "line\n"), func(c *Client) error {
			var b strings.Builder
			err := c.SessionLogs(ctx, "web", api.SessionLogsRequest{Stream: "stderr", Tail: 5, Follow: true}, &b)
			if err == nil && b.String() != "line\n" {
				t.Errorf("logs %q", b.String())
			}
			return err
		}, `GET /v1/sessions/web/logs?follow=1&stream=stderr&tail=5 `},
		{"attach", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: banger-mux/1\r\n\r\n", func(c *Client) error {
			conn, err := c.AttachSession(ctx, "web", api.AttachSessionRequest{Tail: 10, Stdin: true})
			if err == nil {
				conn.Close()
			}
			return err
		}, `POST /v1/sessions/web/attach {"tail":10,"stdin":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := fakeAgent(t, recordRequests(got, tt.raw))
			if err := tt.call(c); err != nil {
				t.Fatal(err)
			}
			if req := <-got; req != tt.want {
				t.Fatalf("request %q, want %q", req, tt.want)
			}
		})
	}
}

func TestAttachSessionRefused(t *testing.T) {
	body := `{"error":{"message":"session web already has a stdin writer attached","hint":"attach with --no-stdin to watch, or --steal-stdin to take stdin over","code":"conflict"}}`
	c, _ := fakeAgent(t, answer(withStatus("409 Conflict", body)))
	_, err := c.AttachSession(context.Background(), "web", api.AttachSessionRequest{Stdin: true})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || !strings.Contains(ae.Hint, "--steal-stdin") {
		t.Fatalf("error %v", err)
	}
}

func withStatus(status, body string) string {
	return "HTTP/1.1 " + status + "\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}
