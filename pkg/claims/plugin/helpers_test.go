package plugin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/identity"
)

// testPlugin is the test plugin binary, built once by TestMain.
var testPlugin struct {
	path, sum string
}

func TestMain(m *testing.M) {
	if os.Getenv(hostChildEnv) != "" {
		hostChild()
		return
	}
	dir, err := os.MkdirTemp("", "tsidp-plugin-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	testPlugin.path = filepath.Join(dir, "testplugin")
	out, err := exec.Command("go", "build", "-o", testPlugin.path, "./internal/testplugin").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the test plugin: %v\n%s", err, out)
		os.Exit(2)
	}
	testPlugin.sum, err = FileSHA256(testPlugin.path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// logSink collects a Manager's log lines.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

// contains reports whether the log has a line containing all of parts.
func (l *logSink) contains(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return true
	}
	return false
}

// shortDir returns a short temporary directory: socket paths are limited.
func shortDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "tp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testConfig is a Config for the test plugin.
func testConfig(args ...string) Config {
	return Config{Name: "test", Path: testPlugin.path, SHA256: testPlugin.sum, Args: args}
}

// startManager starts a Manager for cfgs and closes it at the end of the test.
func startManager(t testing.TB, opts Options, cfgs ...Config) (*Manager, *logSink) {
	t.Helper()
	logs := &logSink{}
	opts.Logf = logs.logf
	if opts.SocketDir == "" {
		opts.SocketDir = shortDir(t)
	}
	m, err := New(cfgs, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v\nlog:\n%s", err, logs)
	}
	t.Cleanup(func() {
		m.Close()
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	return m, logs
}

var alice = &identity.Identity{
	Subject:     "user:12345",
	UserID:      "12345",
	LoginName:   "alice@example.com",
	DisplayName: "Alice",
	NodeName:    "laptop.tail1234.ts.net",
	NodeID:      "nLAPTOP",
	Tailnet:     "tail1234.ts.net",
}

func request(aud string, scopes ...string) *claims.Request {
	return &claims.Request{Identity: alice, Audience: aud, Scopes: scopes}
}

// claimValue returns the JSON of claim name in res.
func claimValue(res *claims.Result, name string) string {
	if res == nil {
		return ""
	}
	for _, c := range res.Claims {
		if c.Name == name {
			return string(c.Value)
		}
	}
	return ""
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// stopProcess sends SIGSTOP to pid and waits until all its threads are
// stopped. The kernel stops a process's threads one by one, once one of
// them runs again and takes the signal: on a loaded machine the others can
// answer a request in between, which a test of a hung plugin must not see.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	stopped := func() bool {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			return false
		}
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				return false
			}
			s := string(b)
			i := strings.LastIndexByte(s, ')')
			if i < 0 || i+2 >= len(s) || (s[i+2] != 'T' && s[i+2] != 't') {
				return false
			}
		}
		return true
	}
	if !waitFor(5*time.Second, stopped) {
		t.Fatalf("process %d did not stop within 5s of SIGSTOP", pid)
	}
}
