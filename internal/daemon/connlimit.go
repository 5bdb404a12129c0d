package daemon

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/bangerdev/banger/api"
)

// Timeouts of the daemon's HTTP server. There is deliberately no read or
// write timeout: attach, exec, the event bus and op watch are streams
// that live as long as the client wants. Slow or stuck clients are bounded
// by the header timeout, the idle timeout and the connection cap instead.
const (
	serverReadHeaderTimeout = 10 * time.Second
	serverIdleTimeout       = 2 * time.Minute
	// busyReplyTimeout bounds how long a refused connection may take to
	// send its request line and read the 503.
	busyReplyTimeout = 2 * time.Second
	// maxBusyReplies bounds the goroutines answering refused connections;
	// past it a refused connection is simply closed.
	maxBusyReplies = 16
)

// httpServer is the daemon's HTTP server around h.
func (d *Daemon) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: serverReadHeaderTimeout,
		IdleTimeout:       serverIdleTimeout,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
}

// limitConns caps the connections the daemon serves at once at
// limits.max_connections. A connection over the cap is not left waiting
// (a CLI would just hang): it gets a 503 saying so and is closed.
func (d *Daemon) limitConns(ln net.Listener) net.Listener {
	n := d.cfg.Limits.MaxConnections
	if n <= 0 {
		n = 256
	}
	return &connLimitListener{Listener: ln, slots: make(chan struct{}, n), busy: make(chan struct{}, maxBusyReplies), log: d.log}
}

type connLimitListener struct {
	net.Listener
	slots chan struct{}
	busy  chan struct{}
	log   *slog.Logger
}

func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			// Hijacked connections (exec, attach) keep their slot until
			// the stream is closed, which is what the cap is for.
			return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
		default:
		}
		l.log.Warn("refused connection: too many open connections", "max", cap(l.slots))
		select {
		case l.busy <- struct{}{}:
			go func() {
				defer func() { <-l.busy }()
				refuseBusy(c, cap(l.slots))
			}()
		default:
			c.Close()
		}
	}
}

// refuseBusy reads the request's head (so the reply is not lost to a
// reset) and answers 503 with an api.Error the CLI prints.
func refuseBusy(c net.Conn, max int) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(busyReplyTimeout))
	if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
		return
	}
	ae := api.Errorf(api.CodeUnavailable,
		"close other attach, exec or event streams, or raise limits.max_connections",
		"the daemon has %d connections open, its limit", max)
	body, _ := json.Marshal(api.ErrorBody{Error: ae})
	status := api.StatusFor(ae.Code)
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", status, http.StatusText(status), len(body), body)
}

type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
