package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// binaries holds the tsidp binaries built for this test process, by build
// tags, in one directory that TestMain removes.
var binaries struct {
	mu    sync.Mutex
	dir   string
	built map[string]*builtBinary
}

type builtBinary struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// buildTSIDP builds cmd/tsidp with the given build tags, once per test
// process, and returns its path.
func buildTSIDP(t testing.TB, tags string) string {
	t.Helper()
	binaries.mu.Lock()
	if binaries.dir == "" {
		d, err := os.MkdirTemp("", "tsidp-bin-")
		if err != nil {
			binaries.mu.Unlock()
			t.Fatal(err)
		}
		binaries.dir, binaries.built = d, map[string]*builtBinary{}
	}
	b := binaries.built[tags]
	if b == nil {
		b = new(builtBinary)
		binaries.built[tags] = b
	}
	dir := binaries.dir
	binaries.mu.Unlock()
	b.once.Do(func() {
		name := "tsidp"
		if tags != "" {
			name += "-" + strings.ReplaceAll(tags, ",", "-")
		}
		b.path = filepath.Join(dir, name)
		b.out, b.err = exec.Command("go", "build", "-tags", tags, "-o", b.path, "../cmd/tsidp").CombinedOutput()
	})
	if b.err != nil {
		t.Fatalf("building tsidp (tags %q): %v\n%s", tags, b.err, b.out)
	}
	return b.path
}

// tsidpBinary is the production binary.
func tsidpBinary(t testing.TB) string { return buildTSIDP(t, "") }

func TestMain(m *testing.M) {
	code := m.Run()
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// runTSIDP runs the binary to completion and returns stdout, stderr and
// the exit code.
func runTSIDP(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tsidpBinary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tsidp %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// startProcess starts the binary in the background, returns it with a
// scanner over its stdout, and kills it when the test ends.
func startProcess(t testing.TB, env []string, args ...string) (*exec.Cmd, *bufio.Scanner, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(tsidpBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &syncWriter{w: &stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, bufio.NewScanner(stdout), &stderr
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// waitForLine reads lines until one contains want, with a bound.
func waitForLine(t testing.TB, sc *bufio.Scanner, want string, timeout time.Duration) string {
	t.Helper()
	found := make(chan string, 1)
	go func() {
		for sc.Scan() {
			if strings.Contains(sc.Text(), want) {
				found <- sc.Text()
				// Keep draining so the process never blocks on a full pipe.
				for sc.Scan() {
				}
				return
			}
		}
		close(found)
	}()
	select {
	case l, ok := <-found:
		if !ok {
			t.Fatalf("output ended without %q", want)
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no %q within %v", want, timeout)
	}
	return ""
}

func TestSandboxCommandAndKeyRotation(t *testing.T) {
	listen, tagged, state := freeAddr(t), freeAddr(t), shortTempDir(t)
	cmd, out, stderr := startProcess(t, nil, "sandbox", "--listen", listen, "--listen-tagged", tagged, "--listen-app", freeAddr(t), "--state-dir", state)
	waitForLine(t, out, "Press Ctrl-C to stop", 90*time.Second)

	hc := httpClient()
	iss := "http://" + listen
	status, before, _ := postToken(t, hc, iss, map[string][]string{"audience": {"sandbox"}})
	if status != 200 {
		t.Fatalf("token before rotation: %d %+v\n%s", status, before, stderr)
	}
	status, taggedTok, _ := postToken(t, hc, "http://"+tagged, map[string][]string{"audience": {"sandbox"}})
	if status != 200 {
		t.Fatalf("tagged token: %d %+v", status, taggedTok)
	}
	oldKID := kidOf(t, before.AccessToken)

	// The sandbox publishes a next key 3s before it may sign; rotate as soon
	// as that allows, exactly as a user would retry.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, errOut, code := runTSIDP(t, "keys", "rotate", "--state-dir", state)
		if code == 0 {
			break
		}
		if !strings.Contains(errOut, "not rotating") || time.Now().After(deadline) {
			t.Fatalf("keys rotate: exit %d: %s", code, errOut)
		}
		if strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("error is not one line: %q", errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}

	jsonOut, errOut, code := runTSIDP(t, "keys", "list", "--json", "--state-dir", state)
	if code != 0 {
		t.Fatalf("keys list: %s", errOut)
	}
	var listed struct {
		Keys []struct {
			KID, Algorithm, State string
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(jsonOut), &listed); err != nil {
		t.Fatalf("keys list --json: %v\n%s", err, jsonOut)
	}
	states := map[string]string{}
	for _, k := range listed.Keys {
		states[k.KID] = k.State
	}
	if states[oldKID] != "retired" {
		t.Errorf("old key %s is %q after rotation, want retired", oldKID, states[oldKID])
	}

	status, after, _ := postToken(t, hc, iss, map[string][]string{"audience": {"sandbox"}})
	if status != 200 {
		t.Fatalf("token after rotation: %d", status)
	}
	newKID := kidOf(t, after.AccessToken)
	if newKID == oldKID || states[newKID] != "active" {
		t.Errorf("active kid after rotation = %s (state %q), before %s", newKID, states[newKID], oldKID)
	}
	// Both tokens verify against the JWKS the issuer now serves.
	verifyGoJose(t, hc, iss, before.AccessToken, "ES256", "sandbox")
	verifyGoJose(t, hc, iss, after.AccessToken, "ES256", "sandbox")

	// Ctrl-C stops the sandbox cleanly.
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("sandbox exit after SIGINT: %v\n%s", err, stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sandbox did not stop within 20s of SIGINT")
	}
}

func TestCLIErrorsAreOneLine(t *testing.T) {
	dir := shortTempDir(t)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("issuer: https://idp.example\naudiences:\n  - name: api\n    alow: ['*']\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--config", bad}, `unknown key "alow"`},
		{[]string{"serve", "--config", filepath.Join(dir, "missing.yaml")}, "no such file"},
		{[]string{"serve", "--backend", "carrier-pigeon", "--issuer", "https://x"}, "backend"},
		{[]string{"keys", "revoke", "--state-dir", dir, "nope"}, "no key set at"},
		{[]string{"keys", "rotate", "--state-dir", dir, "--alg", "HS256"}, "HS256"},
		{[]string{"token", "--audience", "x"}, "--url"},
		{[]string{"serve", "--no-such-flag"}, "no-such-flag"},
	} {
		_, errOut, code := runTSIDP(t, tc.args...)
		errOut = strings.TrimSpace(errOut)
		if code == 0 || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "\n") || !strings.HasPrefix(errOut, "tsidp: ") {
			t.Errorf("tsidp %v: exit %d, stderr %q; want one line starting \"tsidp: \" containing %q", tc.args, code, errOut, tc.want)
		}
	}
}

// TestSandboxStopsUnderLoad sends SIGTERM while 16 connections are busy
// getting tokens: the process must still exit promptly. (tsnet's Close can
// block inside gVisor while connections are open; tsidp bounds it.)
func TestSandboxStopsUnderLoad(t *testing.T) {
	listen, tagged := freeAddr(t), freeAddr(t)
	cmd, out, stderr := startProcess(t, nil, "sandbox", "--listen", listen, "--listen-tagged", tagged, "--listen-app", freeAddr(t), "--state-dir", shortTempDir(t))
	waitForLine(t, out, "Press Ctrl-C to stop", 90*time.Second)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 5 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := hc.Post("http://"+listen+"/token", "application/x-www-form-urlencoded", strings.NewReader("audience=sandbox"))
				if err != nil {
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode == 200 {
					ok.Add(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for deadline := time.Now().Add(60 * time.Second); ok.Load() < 8000; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d tokens under load", ok.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		t.Logf("stopped %v after SIGTERM under load", time.Since(start).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatalf("sandbox still running 30s after SIGTERM under load\n%s", stderr)
	}
}
