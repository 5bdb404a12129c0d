package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
)

// fakeDaemon serves h on a socket like the daemon's and returns its path.
func fakeDaemon(t *testing.T, h http.Handler) string {
	t.Helper()
	// Not t.TempDir: a unix socket path must stay short.
	dir, err := os.MkdirTemp("", "bgcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "banger.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// runWith drives the command tree against the daemon on sock.
func runWith(t *testing.T, sock string, stdin io.Reader, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("BANGER_HOME", t.TempDir())
	var out, errb bytes.Buffer
	g := &globals{stdout: &out, stderr: &errb, stdin: stdin}
	root := newRoot(g)
	root.SetArgs(append([]string{"--socket", sock}, args...))
	code := exitCode(g, root.Execute())
	return code, out.String(), errb.String()
}

// fakeExecDaemon serves POST /v1/vms/{name}/exec like the daemon: it
// answers 101 and plays the agent's end of the mux stream. The command
// echoes its stdin to stdout, says what it got on stderr and exits with
// code.
func fakeExecDaemon(t *testing.T, code int, got chan<- api.ExecRequest) string {
	t.Helper()
	return fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.ExecRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !strings.HasSuffix(r.URL.Path, "/vms/dev/exec") {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		got <- req
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+api.MuxProtocol+"\r\n\r\n")
		r2 := mux.NewReader(bufio.NewReader(io.MultiReader(brw.Reader, conn)))
		mw := mux.NewWriter(conn)
		var in bytes.Buffer
		for {
			f, err := r2.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == mux.Stdin {
				in.Write(f.Payload)
			}
			if f.Type == mux.StdinClose {
				break
			}
		}
		mw.WriteFrame(mux.Stdout, in.Bytes())
		mw.WriteFrame(mux.Stderr, []byte("stdin closed\n"))
		mw.WriteExit(api.ExitStatus{Code: code})
	}))
}

// `vm exec` with piped stdin passes it to the command, closes it at its
// end, prints the command's output and exits with its status.
func TestExecPipesStdinAndExitCode(t *testing.T) {
	got := make(chan api.ExecRequest, 1)
	sock := fakeExecDaemon(t, 3, got)
	code, out, errb := runWith(t, sock, strings.NewReader("hello\n"), "vm", "exec", "dev", "--", "cat")
	if code != 3 {
		t.Fatalf("exit %d, want 3 (stderr %q)", code, errb)
	}
	if out != "hello\n" || errb != "stdin closed\n" {
		t.Fatalf("stdout %q stderr %q", out, errb)
	}
	req := <-got
	if !req.Stdin || req.TTY || len(req.Argv) != 1 || req.Argv[0] != "cat" {
		t.Fatalf("request %+v", req)
	}
}
