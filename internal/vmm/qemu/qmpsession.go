package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// session is one QMP connection kept for a sequence of commands (save,
// restore), where a descriptor handed over with getfd must reach the
// same monitor that later uses it. Every exchange is bounded: a QEMU
// that stops answering costs a timeout, not a hang.
type session struct {
	mon *qmp.SocketMonitor
}

func dialSession(ctx context.Context, path string) (*session, error) {
	mon, err := qmp.NewSocketMonitor("unix", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect qmp: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			mon.Disconnect()
			return nil, fmt.Errorf("qmp handshake: %w", err)
		}
		return &session{mon: mon}, nil
	case <-time.After(qmpTimeout):
	case <-ctx.Done():
	}
	mon.Disconnect()
	<-done
	return nil, fmt.Errorf("qmp handshake: no answer within %s", qmpTimeout)
}

func (s *session) close() { s.mon.Disconnect() }

// run executes one command (args marshalled as its arguments, nil for
// none), passing f along with SCM_RIGHTS when set, and returns the
// reply's "return" member. A command that does not answer within
// timeout (or ctx) ends the session.
func (s *session) run(ctx context.Context, timeout time.Duration, cmd string, args any, f *os.File) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := s.mon.RunWithFile(b, f)
		done <- result{out, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(timeout):
		s.mon.Disconnect()
		return nil, fmt.Errorf("qmp %s: no answer within %s", cmd, timeout)
	case <-ctx.Done():
		s.mon.Disconnect()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, r.err)
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(r.out, &reply); err != nil {
		return nil, fmt.Errorf("qmp %s: parse reply: %w", cmd, err)
	}
	return reply.Return, nil
}

// migrateStatus is the part of query-migrate's reply that matters.
type migrateStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until the migration (outgoing or
// incoming) completed or failed, or until deadline.
func (s *session) waitMigration(ctx context.Context, deadline time.Time) error {
	for {
		out, err := s.run(ctx, qmpTimeout*6, "query-migrate", nil, nil)
		if err != nil {
			return err
		}
		var st migrateStatus
		if err := json.Unmarshal(out, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if st.ErrorDesc != "" {
				return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
			}
			return fmt.Errorf("migration %s", st.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("migration not done by the deadline (status %q)", st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// status is query-status's "status".
func (s *session) status(ctx context.Context) (string, error) {
	out, err := s.run(ctx, qmpTimeout, "query-status", nil, nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", fmt.Errorf("query-status: %w", err)
	}
	return st.Status, nil
}

// capability is one migrate-set-capabilities entry.
type capability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}
