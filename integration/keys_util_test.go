package integration

// Helpers of the key lifecycle and replica tests (crash_test.go,
// etcd_test.go, keys_cli_test.go, keysdoc_test.go).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// crashBinary builds cmd/tsidp with the tsidp_crashtest tag, which compiles
// in internal/crashtest's hook (TSIDP_TEST_CRASH_AT).
func crashBinary(t testing.TB) string { return buildTSIDP(t, "tsidp_crashtest") }

// proc is a tsidp process started by a test.
type proc struct {
	cmd    *exec.Cmd
	out    *bufio.Scanner
	stderr *syncWriter
	buf    *bytes.Buffer
	exited chan struct{}
}

// startBin starts bin with args and extra environment; the process is
// killed when the test ends.
func startBin(t testing.TB, bin string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: bufio.NewScanner(stdout), buf: new(bytes.Buffer), exited: make(chan struct{})}
	p.stderr = &syncWriter{w: p.buf}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitLine waits up to d for a stdout line containing want, then keeps
// draining stdout. On failure it shows the process's stderr.
func (p *proc) waitLine(t testing.TB, want string, d time.Duration) {
	t.Helper()
	found := make(chan bool, 1)
	go func() {
		for p.out.Scan() {
			if strings.Contains(p.out.Text(), want) {
				found <- true
				for p.out.Scan() {
				}
				return
			}
		}
		found <- false
	}()
	select {
	case ok := <-found:
		if !ok {
			t.Fatalf("output ended without %q; stderr:\n%s", want, p.log())
		}
	case <-time.After(d):
		t.Fatalf("no %q within %v; stderr:\n%s", want, d, p.log())
	}
}

// log returns what the process wrote to stderr so far.
func (p *proc) log() string {
	p.stderr.mu.Lock()
	defer p.stderr.mu.Unlock()
	return p.buf.String()
}

// waitExit waits up to d for the process to exit.
func (p *proc) waitExit(t testing.TB, d time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState
	case <-time.After(d):
		t.Fatalf("process %d did not exit within %v\n%s", p.cmd.Process.Pid, d, p.log())
		return nil
	}
}

// killedBy reports whether a process exited because of sig.
func killedBy(ps *os.ProcessState, sig syscall.Signal) bool {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// runBin runs bin to completion with a bound.
func runBin(t testing.TB, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return o.String(), e.String(), code
}

// listedKey is one entry of `tsidp keys list --json`.
type listedKey struct {
	KID       string `json:"kid"`
	Algorithm string `json:"algorithm"`
	State     string `json:"state"`
}

type keysListing struct {
	Keys   []listedKey `json:"keys"`
	Status struct {
		Version int64 `json:"version"`
	} `json:"status"`
}

// keysList runs `tsidp keys list --json` with args (state dir, store
// flags) and decodes it.
func keysList(t testing.TB, args ...string) keysListing {
	t.Helper()
	out, errOut, code := runTSIDP(t, append([]string{"keys", "list", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("keys list %v: exit %d: %s", args, code, errOut)
	}
	var l keysListing
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("keys list --json: %v\n%s", err, out)
	}
	return l
}

// active returns the active kid per algorithm, failing t unless every
// algorithm in algs has exactly one.
func (l keysListing) active(t testing.TB, algs ...string) map[string]string {
	t.Helper()
	n := map[string]int{}
	act := map[string]string{}
	for _, k := range l.Keys {
		if k.State == "active" {
			n[k.Algorithm]++
			act[k.Algorithm] = k.KID
		}
	}
	for _, a := range algs {
		if n[a] != 1 {
			t.Errorf("%s has %d active keys, want exactly 1 (%+v)", a, n[a], l.Keys)
		}
	}
	return act
}

func (l keysListing) state(kid string) string {
	for _, k := range l.Keys {
		if k.KID == kid {
			return k.State
		}
	}
	return ""
}

// fetchJWKS returns the JWKS served at base.
func fetchJWKS(t testing.TB, hc *http.Client, base string) jose.JSONWebKeySet {
	t.Helper()
	res, err := hc.Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatalf("GET %s/.well-known/jwks.json: %v", base, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var set jose.JSONWebKeySet
	if res.StatusCode != 200 || json.Unmarshal(b, &set) != nil {
		t.Fatalf("JWKS from %s: %d %s", base, res.StatusCode, b)
	}
	return set
}

// verifyWith checks a token's signature with the JWKS key its kid names,
// and that it has not expired. The issuer is not checked: replicas are
// reached at different addresses.
func verifyWith(jwks jose.JSONWebKeySet, token string) error {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		return err
	}
	kid := tok.Headers[0].KeyID
	ks := jwks.Key(kid)
	if len(ks) != 1 {
		return fmt.Errorf("kid %s: %d keys in the JWKS", kid, len(ks))
	}
	var c jwt.Claims
	if err := tok.Claims(ks[0].Key, &c); err != nil {
		return fmt.Errorf("kid %s: %w", kid, err)
	}
	return c.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, 0)
}

// writeKEK writes a fresh random key-encryption key, hex-encoded, 0400.
func writeKEK(t testing.TB, dir string) string {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	p := filepath.Join(dir, "kek")
	if err := os.WriteFile(p, []byte(fmt.Sprintf("%x\n", k)), 0o400); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeFile writes a test file, 0600.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// perAlgAudiences is a config with one audience per algorithm.
const perAlgAudiences = `audiences:
  - name: es
    allow: ["*"]
    algorithm: ES256
  - name: rs
    allow: ["*"]
    algorithm: RS256
  - name: ed
    allow: ["*"]
    algorithm: EdDSA
`

var audAlg = map[string]string{"es": "ES256", "rs": "RS256", "ed": "EdDSA"}

// lines returns s's lines that contain want.
func linesWith(s, want string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, want) {
			out = append(out, l)
		}
	}
	return out
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
