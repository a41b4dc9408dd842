package admin

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// startAdmin serves the admin API of a new Manager on a new socket until
// the test ends.
func startAdmin(t *testing.T) (sock string, m *keys.Manager) {
	t.Helper()
	p := keys.Policy{Algorithms: []keys.Algorithm{keys.ES256, keys.EdDSA}, JWKSMaxAge: time.Second, ClockSkew: time.Second}
	p.Provision()
	m = newManager(t, newStore(t, nil), p, time.Now)
	return serve(t, Config{Keys: m, Version: "test", Logf: t.Logf}), m
}

func TestSocketMode(t *testing.T) {
	sock, _ := startAdmin(t)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("admin socket mode = %v, want socket 0600", fi.Mode())
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another tsidp") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
}

// TestOneDaemonPerSocket: the lock, not an answer on the socket, decides
// whether another daemon owns the state directory. A second daemon fails
// even when the first one's socket is gone (or too busy to answer); once the
// first closes, its socket is removed and a successor starts, and the first
// closing again does not remove the successor's socket.
func TestOneDaemonPerSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	first, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(sock)
	if ln, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another tsidp is serving on "+sock) {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("second Listen while the first holds the lock: %v", err)
	}
	first.Close()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still there after Close: %v", err)
	}
	second, err := Listen(sock)
	if err != nil {
		t.Fatalf("Listen after the first closed: %v", err)
	}
	defer second.Close()
	first.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("the first listener's second Close removed the successor's socket: %v", err)
	}
	if fi, err := os.Stat(sock + ".lock"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v, %v", fi, err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "a.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// Leave the file behind as a crashed daemon would.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln2.Close()
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
	if _, err := Listen(filepath.Join(dir, "file")); err == nil {
		t.Error("Listen replaced a regular file")
	}
}

func TestClientRotateRevokeImport(t *testing.T) {
	sock, m := startAdmin(t)
	c := NewClient(sock)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.Version != "test" || len(st.Keys.Algorithms) != 2 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	kl, ks, err := c.List(ctx)
	if err != nil || len(kl) != 4 || len(ks.Algorithms) != 2 {
		t.Fatalf("keys = %+v, %+v, %v", kl, ks, err)
	}
	// Rotation is refused until the next key has been published long
	// enough; force overrides.
	if _, err := c.Rotate(ctx, []keys.Algorithm{keys.ES256}, false); err == nil {
		t.Error("early rotation accepted without force")
	}
	oldActive := m.Status(time.Now()).Algorithms[0].Active
	if _, err := c.Rotate(ctx, []keys.Algorithm{keys.ES256}, true); err != nil {
		t.Fatal(err)
	}
	if m.Status(time.Now()).Algorithms[0].Active == oldActive {
		t.Error("forced rotation did not change the active key")
	}
	if _, err := c.Revoke(ctx, oldActive); err != nil {
		t.Fatalf("revoke retired: %v", err)
	}
	if body, err := c.ExportJWKS(ctx); err != nil || strings.Contains(string(body), oldActive) {
		t.Errorf("revoked key still in JWKS: %v %s", err, body)
	}
	if _, err := c.Revoke(ctx, "no-such-kid"); err == nil {
		t.Error("revoking an unknown kid succeeded")
	}
	if _, err := c.Import(ctx, []byte("not a key"), keys.ES256, false); err == nil {
		t.Error("importing garbage succeeded")
	}
}

func TestClientNotRunning(t *testing.T) {
	_, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(context.Background())
	if !errors.Is(err, ErrNotRunning) {
		t.Errorf("no socket: %v, want ErrNotRunning", err)
	}
}

// TestOtherUserRefused connects from a real process running as "nobody":
// even with the socket made world-writable, the peer-uid check drops it.
func TestOtherUserRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs as root, to start a client process as another user")
	}
	sock, _ := startAdmin(t)
	// Open the path up completely: the uid check alone must hold.
	os.Chmod(filepath.Dir(sock), 0o755)
	os.Chmod(sock, 0o777)
	script := `import socket,sys
s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(b"GET /v1/keys HTTP/1.0\r\n\r\n")
data=s.recv(100)
print("GOT" if data else "CLOSED")`
	cmd := exec.Command("/usr/bin/python3", "-c", script, sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Connection reset") && !strings.Contains(string(out), "Broken pipe") {
		t.Fatalf("client as nobody: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "GOT") {
		t.Fatalf("a process running as nobody got an answer from the admin API: %s", out)
	}
	// The same client as root gets an answer.
	out, err = exec.Command("/usr/bin/python3", "-c", script, sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "GOT") {
		t.Fatalf("client as root: %v %s", err, out)
	}
}

// nobody is the uid and gid the tests run other users' processes as.
const nobody = 65534

// startImpostor runs this test binary as an impostor admin server (see
// runImpostor) on dir/admin.sock, as cred's user (nil: this process's), and
// returns the socket path and the impostor's output lines.
func startImpostor(t *testing.T, bin, dir string, cred *syscall.Credential) (string, <-chan string) {
	t.Helper()
	sock := filepath.Join(dir, "admin.sock")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), impostorEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if l := nextLine(t, lines); l != "listening" {
		t.Fatalf("impostor: %q", l)
	}
	return sock, lines
}

func nextLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l := <-lines:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("the impostor said nothing for 10s")
		return ""
	}
}

// TestClientRefusesOtherUsersServer: a local user who can write to the
// socket's directory puts a listener of their own at the admin socket's
// path. The client (root here, as `sudo tsidp keys import` would be)
// checks the listener's peer credentials and refuses it before sending a
// byte: neither the private key of an import nor a revocation reaches it,
// and the CLI cannot take its answer for the daemon's. The same listener
// running as root (a user the client trusts) is talked to, which shows
// the test would see what an untrusted one was sent.
func TestClientRefusesOtherUsersServer(t *testing.T) {
	if !asRoot(t) {
		return
	}
	top, err := os.MkdirTemp("", "adm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	os.Chmod(top, 0o755)
	// The test binary, where the other user can run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(top, "impostor")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))

	// Another user's listener: refused, sent nothing.
	theirs := filepath.Join(top, "theirs")
	os.Mkdir(theirs, 0o700)
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	sock, lines := startImpostor(t, bin, theirs, &syscall.Credential{Uid: nobody, Gid: nobody})
	c := NewClient(sock)
	for name, call := range map[string]func() error{
		"import": func() error { _, err := c.Import(ctx, []byte(keyPEM), keys.ES256, false); return err },
		"revoke": func() error { _, err := c.Revoke(ctx, "somekid"); return err },
		"status": func() error { _, err := c.Status(ctx); return err },
	} {
		err := call()
		if !errors.Is(err, ErrUntrustedServer) || errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "running as uid 65534") {
			t.Errorf("%s through another user's listener: %v; want ErrUntrustedServer naming uid 65534", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE") {
			t.Errorf("%s: the error holds the key: %v", name, err)
		}
		if l := nextLine(t, lines); l != "conn 0 bytes" {
			t.Errorf("%s: the other user's listener got %q; want nothing sent", name, l)
		}
	}

	// The keys commands do not take it for "no daemon" either: they fail
	// rather than work on the store behind what may be a daemon.
	if _, err := OpenKeys(ctx, sock, keys.Policy{}, func(context.Context) (keys.Store, error) {
		t.Error("OpenKeys opened the store with another user's listener on the socket")
		return nil, errors.New("no store")
	}); !errors.Is(err, ErrUntrustedServer) {
		t.Errorf("OpenKeys with another user's listener: %v", err)
	}
	if l := nextLine(t, lines); l != "conn 0 bytes" {
		t.Errorf("OpenKeys: the other user's listener got %q", l)
	}

	// The same listener as root: trusted, and it gets the request.
	mine := filepath.Join(top, "mine")
	os.Mkdir(mine, 0o700)
	sock, lines = startImpostor(t, bin, mine, nil)
	st, err := NewClient(sock).Status(ctx)
	if err != nil || st.Version != "impostor" {
		t.Fatalf("status through root's listener: %+v, %v", st, err)
	}
	if l := nextLine(t, lines); l == "conn 0 bytes" {
		t.Errorf("root's listener got %q", l)
	}
}

// TestListenRefusesUnsafeDir: the daemon does not serve its admin socket
// in a directory that others can write to or another user owns, since
// they could replace the socket; the error names the fix.
func TestListenRefusesUnsafeDir(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	groupw := filepath.Join(t.TempDir(), "groupw")
	os.Mkdir(groupw, 0o770)
	os.Chmod(groupw, 0o770)
	cases := []struct {
		dir, want string
	}{
		{open, "admin socket directory " + open + " has mode 0777: group or others can write to it and could replace the admin socket and what else tsidp keeps there; fix: chmod go-w " + open},
		{groupw, "has mode 0770"},
	}
	// A directory another user owns needs root to make; not being root
	// fails in CI and leaves that case out elsewhere.
	if asRoot(t) {
		theirs := filepath.Join(t.TempDir(), "theirs")
		os.Mkdir(theirs, 0o700)
		if err := os.Chown(theirs, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct{ dir, want string }{theirs, "is owned by uid 65534, but tsidp runs as uid 0: its owner could replace the admin socket and what else tsidp keeps there; fix: chown 0 " + theirs})
	}
	for _, tc := range cases {
		ln, err := Listen(filepath.Join(tc.dir, "admin.sock"))
		if err == nil {
			ln.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Listen in %s: %v; want one line containing %q", tc.dir, err, tc.want)
		}
		if _, err := os.Lstat(filepath.Join(tc.dir, "admin.sock")); !os.IsNotExist(err) {
			t.Errorf("Listen in %s created the socket (%v)", tc.dir, err)
		}
	}
}

// TestServerOutlastsClient: the admin server, as the daemon and these
// tests run it, lets a slow answer (a rotation generating RSA keys) run
// longer than the client waits, so the client, not the server, gives up,
// and a request header cannot hold a connection open for long.
func TestServerOutlastsClient(t *testing.T) {
	srv := NewServer(Config{})
	if srv.WriteTimeout <= clientTimeout || srv.ReadTimeout <= 0 || srv.ReadHeaderTimeout <= 0 || srv.ReadHeaderTimeout > 10*time.Second {
		t.Errorf("admin server timeouts: write %v (client %v), read %v, header %v", srv.WriteTimeout, clientTimeout, srv.ReadTimeout, srv.ReadHeaderTimeout)
	}
}
