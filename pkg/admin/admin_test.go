package admin

import (
	"context"
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

func startAdmin(t *testing.T) (sock string, m *keys.Manager) {
	t.Helper()
	dir, err := os.MkdirTemp("", "adm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := keys.NewFileStore(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := keys.Policy{Algorithms: []keys.Algorithm{keys.ES256, keys.EdDSA}, JWKSMaxAge: time.Second, ClockSkew: time.Second}
	p.Provision()
	m, err = keys.NewManager(context.Background(), st, p, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "admin.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Serve(ctx, ln, Handler(Config{Keys: m, Version: "test", Logf: t.Logf})); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock, m
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
	kr, err := c.Keys(ctx)
	if err != nil || len(kr.Keys) != 4 {
		t.Fatalf("keys = %+v, %v", kr, err)
	}
	// Rotation is refused until the next key has been published long
	// enough; force overrides.
	if _, err := c.Rotate(ctx, RotateRequest{Algorithms: []keys.Algorithm{keys.ES256}}); err == nil {
		t.Error("early rotation accepted without force")
	}
	oldActive := m.Status(time.Now()).Algorithms[0].Active
	if _, err := c.Rotate(ctx, RotateRequest{Algorithms: []keys.Algorithm{keys.ES256}, Force: true}); err != nil {
		t.Fatal(err)
	}
	if m.Status(time.Now()).Algorithms[0].Active == oldActive {
		t.Error("forced rotation did not change the active key")
	}
	if _, err := c.Revoke(ctx, oldActive); err != nil {
		t.Fatalf("revoke retired: %v", err)
	}
	if body, err := c.JWKS(ctx); err != nil || strings.Contains(string(body), oldActive) {
		t.Errorf("revoked key still in JWKS: %v %s", err, body)
	}
	if _, err := c.Revoke(ctx, "no-such-kid"); err == nil {
		t.Error("revoking an unknown kid succeeded")
	}
	if _, err := c.Import(ctx, ImportRequest{Key: "not a key", Algorithm: keys.ES256}); err == nil {
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
