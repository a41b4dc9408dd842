package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/integration/harness"
	"github.com/tsidp/tsidp/pkg/tailnet"
)

// Set-up shared by the tests that run the built tsidp binary with
// "serve --backend tailscale" beside a real tailscaled.

// realDomain is the MagicDNS suffix, and so the tailnet name, of the
// loopback tailnet.
const realDomain = "idp-test.ts.net"

// realAudiences is the configuration tsidp serves in these tests: one
// audience per algorithm for everyone, one for people only, and one with
// RFC 9068 access tokens.
const realAudiences = `audiences:
  - {name: "https://rs256.example", allow: ["*"], algorithm: RS256}
  - {name: "https://es256.example", allow: ["*"], algorithm: ES256}
  - {name: "https://eddsa.example", allow: ["*"], algorithm: EdDSA}
  - {name: people-only, allow: ["*@fake-control.example.net"], algorithm: ES256}
  - {name: "https://rfc9068.example", allow: ["*"], algorithm: ES256, token_profile: rfc9068}
`

// algAudience is the audience that signs with each algorithm.
var algAudience = map[string]string{
	"RS256": "https://rs256.example",
	"ES256": "https://es256.example",
	"EdDSA": "https://eddsa.example",
}

// realTailnet is a control server on loopback and the real tailscaled tsidp
// runs beside ("idp"), in userspace mode: inbound tailnet TCP to the idp
// node's port P reaches 127.0.0.1:P.
type realTailnet struct {
	control *tailnet.Control
	idp     *harness.Tailscaled
}

// needTailscaleBinaries builds tailscaled and tailscale unless they are
// cached, with a bound of its own: a cold build takes about 4 minutes on 2
// cores, and should not eat into a test's own deadline. Call it before
// starting the test's clock. It fails the test, never skips.
func needTailscaleBinaries(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	t0 := time.Now()
	if _, _, err := harness.Binaries(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Logf("built tailscaled and tailscale in %v", d.Round(time.Second))
	}
}

// startRealTailnet starts control (honouring tag:ci) and the idp tailscaled.
// It fails the test, never skips, when a part is missing.
func startRealTailnet(ctx context.Context, t *testing.T) *realTailnet {
	t.Helper()
	t0 := time.Now()
	needTailscaleBinaries(t)
	c, err := tailnet.StartControl(tailnet.ControlConfig{
		MagicDNSDomain: realDomain,
		TagOwners:      map[string][]string{"tag:ci": nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() }) // runs after the daemons' cleanups
	rt := &realTailnet{control: c}
	rt.idp = rt.startTailscaled(ctx, t, "idp")
	t.Logf("control and idp tailscaled (%v) up in %v", rt.idp.IP4(), time.Since(t0).Round(time.Millisecond))
	return rt
}

// startTailscaled starts another real tailscaled node on the tailnet.
func (rt *realTailnet) startTailscaled(ctx context.Context, t *testing.T, hostname string, tags ...string) *harness.Tailscaled {
	t.Helper()
	d := harness.StartTailscaled(ctx, t, harness.TailscaledOptions{ControlURL: rt.control.URL()})
	if err := d.Up(ctx, hostname, tags); err != nil {
		t.Fatal(err)
	}
	return d
}

// tsidpServer is one "tsidp serve --backend tailscale" process.
type tsidpServer struct {
	cmd      *exec.Cmd
	stderr   *bytes.Buffer // written by the process; read with log()
	stateDir string
	addr     string // 127.0.0.1:P
	issuer   string // http://127.0.0.1:P: what verifiers on this host use
	tailnet  string // http://<idp IP>:P: what tailnet callers use
}

// startTSIDP runs the built tsidp binary beside rt.idp, listening on a free
// loopback port with issuer http://127.0.0.1:P, and waits until /readyz
// says it is ready.
func (rt *realTailnet) startTSIDP(t *testing.T, extraArgs ...string) *tsidpServer {
	t.Helper()
	state := shortTempDir(t)
	cfg := filepath.Join(state, "tsidp.yaml")
	if err := os.WriteFile(cfg, []byte(realAudiences), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	s := &tsidpServer{stateDir: state, addr: addr, issuer: "http://" + addr}
	_, port, _ := net.SplitHostPort(addr)
	s.tailnet = "http://" + net.JoinHostPort(rt.idp.IP4().String(), port)
	args := append([]string{"serve", "--backend", "tailscale", "--socket", rt.idp.Socket(),
		"--listen", addr, "--issuer", s.issuer, "--state-dir", state, "--config", cfg}, extraArgs...)
	t0 := time.Now()
	s.cmd, _, s.stderr = startProcess(t, nil, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tsidp %v log:\n%s", extraArgs, s.log())
		}
	})
	s.waitReady(t, http.StatusOK, 60*time.Second)
	t.Logf("tsidp %v ready on %s in %v", extraArgs, addr, time.Since(t0).Round(time.Millisecond))
	return s
}

// log returns what the process has logged so far.
func (s *tsidpServer) log() string {
	sw := s.cmd.Stderr.(*syncWriter)
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return s.stderr.String()
}

// waitReady polls /readyz until it answers want, within bound.
func (s *tsidpServer) waitReady(t *testing.T, want int, bound time.Duration) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(bound)
	last := "no answer"
	for {
		res, err := hc.Get(s.issuer + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == want {
				return
			}
			last = fmt.Sprintf("%d %s", res.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("tsidp /readyz: want %d within %v, last: %s\n%s", want, bound, last, s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tokenResult is one answer of POST /token.
type tokenResult struct {
	status int
	header http.Header
	answer tokenAnswer
	body   string
}

// requestToken posts form (and extra headers) to base/token through hc. A
// transport error is retried within a bound: a tailnet path can need a
// WireGuard handshake retransmit, and about one tailnet dial in hundreds
// stalls (see ../../shared/TESTING.md). HTTP answers are never retried.
func requestToken(t *testing.T, hc *http.Client, base string, form url.Values, hdr http.Header) tokenResult {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		res, err := hc.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(res.Body)
			res.Body.Close()
			cancel()
			if rerr == nil {
				r := tokenResult{status: res.StatusCode, header: res.Header, body: string(body)}
				if err := json.Unmarshal(body, &r.answer); err != nil {
					t.Fatalf("POST %s/token: %d, body is not JSON: %q", base, res.StatusCode, body)
				}
				if ct := res.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("POST %s/token: Content-Type %q", base, ct)
				}
				return r
			}
			err = rerr
		}
		cancel()
		if time.Now().After(deadline) {
			t.Fatalf("POST %s/token: %v", base, err)
		}
		t.Logf("POST %s/token: %v; retrying", base, err)
		time.Sleep(100 * time.Millisecond)
	}
}

// mustToken requests a token that must be issued and returns it.
func mustToken(t *testing.T, hc *http.Client, base string, form url.Values) string {
	t.Helper()
	r := requestToken(t, hc, base, form, nil)
	if r.status != http.StatusOK || r.answer.AccessToken == "" {
		t.Fatalf("POST %s/token %v: %d %s", base, form, r.status, r.body)
	}
	return r.answer.AccessToken
}

// checkRefused checks that r is an RFC 6749 §5.2 error: the status, the
// error code, a description, no token.
func checkRefused(t *testing.T, what string, r tokenResult, status int, code string) {
	t.Helper()
	if r.status != status || r.answer.Error != code || r.answer.ErrorDescription == "" || r.answer.AccessToken != "" ||
		strings.Contains(r.body, "access_token") {
		t.Errorf("%s: got %d %s; want %d with error %q, a description and no token", what, r.status, r.body, status, code)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%s: Cache-Control %q, want no-store", what, cc)
	}
}
