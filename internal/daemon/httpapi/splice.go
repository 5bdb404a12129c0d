package httpapi

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"

	"github.com/bangerdev/banger/api"
)

// upgradeAndSplice answers 101 on the client's connection and splices it
// to guest, an upgraded agent stream: exec and attach reach the guest
// before they answer, so a refusal is still a plain HTTP error.
func upgradeAndSplice(w http.ResponseWriter, guest net.Conn) {
	defer guest.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, errors.New("connection cannot be hijacked"))
		return
	}
	client, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer client.Close()
	if _, err := io.WriteString(client, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n"); err != nil {
		return
	}
	splice(client, brw.Reader, guest)
}

// splice copies both ways until either side is done, then closes both.
func splice(client net.Conn, clientR *bufio.Reader, guest net.Conn) {
	var once sync.Once
	done := make(chan struct{})
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			guest.Close()
			close(done)
		})
	}
	go func() {
		_, _ = io.Copy(guest, clientR)
		closeBoth()
	}()
	go func() {
		_, _ = io.Copy(client, guest)
		closeBoth()
	}()
	<-done
}
