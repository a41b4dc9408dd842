package admin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// impostorEnv names the socket path a re-executed test binary listens on as
// an impostor admin server (see runImpostor).
const impostorEnv = "TSIDP_ADMIN_TEST_IMPOSTOR"

func TestMain(m *testing.M) {
	if path := os.Getenv(impostorEnv); path != "" {
		os.Exit(runImpostor(path))
	}
	os.Exit(m.Run())
}

// runImpostor is what a local attacker would run at the admin socket's
// path: a listener that answers like the daemon. It prints "listening",
// then for every connection one line "conn N bytes" with how many bytes the
// client sent, and answers any request with a status of version
// "impostor".
func runImpostor(path string) int {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	os.Chmod(path, 0o666)
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		cr := &countingReader{r: c}
		if req, err := http.ReadRequest(bufio.NewReader(cr)); err == nil {
			io.Copy(io.Discard, req.Body)
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 22\r\n\r\n{\"version\":\"impostor\"}")
		}
		c.Close()
		fmt.Printf("conn %d bytes\n", cr.n)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// asRoot reports whether the test runs as root, which it needs to start a
// process as another user or give a file away. CI runs as root: there, not being root fails the
// test; elsewhere the test logs that it checked nothing and passes.
func asRoot(t *testing.T) bool {
	t.Helper()
	if os.Getuid() == 0 {
		return true
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test must run as root in CI, to start a process as another user")
	}
	t.Log("not root: cannot act as another user, so this test leaves out what needs that (CI runs it as root)")
	return false
}
