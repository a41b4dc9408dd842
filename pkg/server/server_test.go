package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
)

// staticSource is a stand-in identity source for unit tests of the HTTP
// layer: it counts lookups and can be switched to "down". Real WhoIs answers
// are tested through real tailnets in pkg/sandbox and integration/.
type staticSource struct {
	id    *identity.Identity
	calls atomic.Int64
	down  atomic.Bool
}

func (s *staticSource) Identify(ctx context.Context, peer netip.AddrPort) (*identity.Identity, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return nil, fmt.Errorf("test: %w", identity.ErrUnavailable)
	}
	if s.id == nil {
		return nil, fmt.Errorf("test: %w", identity.ErrUnknownPeer)
	}
	return s.id, nil
}

func (s *staticSource) Ready(context.Context) error {
	if s.down.Load() {
		return identity.ErrUnavailable
	}
	return nil
}

var alice = &identity.Identity{Subject: "user:1", UserID: "1", LoginName: "alice@example.com", DisplayName: "Alice",
	NodeName: "laptop.tail1.ts.net", NodeID: "nL", Tailnet: "tail1.ts.net"}

var (
	managerOnce sync.Once
	manager     *keys.Manager
)

func testManager(t testing.TB) *keys.Manager {
	t.Helper()
	managerOnce.Do(func() {
		dir, err := newTempDir()
		if err != nil {
			t.Fatal(err)
		}
		st, err := filestore.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		p := keys.Policy{}
		p.Provision()
		manager, err = keys.NewManager(context.Background(), st, p, nil)
		if err != nil {
			t.Fatal(err)
		}
	})
	return manager
}

func newTestServer(t testing.TB, src identity.Source, enrichers ...claims.Enricher) *Server {
	t.Helper()
	reg, err := audience.NewRegistry([]audience.Config{
		{Name: "api", Allow: []string{"*@example.com"}},
		{Name: "eddsa", Allow: []string{"*"}, Algorithm: "EdDSA"},
		{Name: "rsa", Allow: []string{"*"}, Algorithm: "RS256"},
		{Name: "eng", Allow: []string{"group:eng"}},
	}, audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	return newServerWith(t, reg, src, Config{}, enrichers...)
}

// newServerWith builds a Server for reg with cfg's other fields, with the
// shared test key manager and an issuance core over enrichers.
func newServerWith(t testing.TB, reg *audience.Registry, src identity.Source, cfg Config, enrichers ...claims.Enricher) *Server {
	t.Helper()
	core, err := issue.New(issue.Config{Issuer: "https://idp.example", Audiences: reg, Enrichers: enrichers,
		ClockSkew: 2 * time.Minute, Logf: cfg.Logf})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Core, cfg.Source, cfg.Signer = core, src, testManager(t)
	if cfg.Algorithms == nil {
		cfg.Algorithms = []string{"ES256", "RS256", "EdDSA"}
	}
	if cfg.JWKSMaxAge == 0 {
		cfg.JWKSMaxAge = time.Hour
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serveReal serves s on a real loopback listener with NewHTTPServer, so
// per-connection state works as in production.
func serveReal(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.NewHTTPServer()
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

func TestIdentityResolvedOncePerConnection(t *testing.T) {
	src := &staticSource{id: alice}
	base := serveReal(t, newTestServer(t, src))
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for i := 0; i < 5; i++ {
		res, err := hc.PostForm(base+"/token", url.Values{"audience": {"api"}})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, res.StatusCode)
		}
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("5 requests on one connection made %d identity lookups, want 1", n)
	}
	// A new connection looks up again.
	tr.CloseIdleConnections()
	res, err := hc.PostForm(base+"/token", url.Values{"audience": {"api"}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if n := src.calls.Load(); n != 2 {
		t.Errorf("after a new connection: %d lookups, want 2", n)
	}
}

func TestCachedIdentityStillFailsClosed(t *testing.T) {
	src := &staticSource{id: alice}
	base := serveReal(t, newTestServer(t, src))
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	post := func() (int, map[string]any) {
		res, err := hc.PostForm(base+"/token", url.Values{"audience": {"api"}})
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var m map[string]any
		json.NewDecoder(res.Body).Decode(&m)
		return res.StatusCode, m
	}
	if code, _ := post(); code != 200 {
		t.Fatal(code)
	}
	src.down.Store(true) // tailscaled stops while the connection stays open
	code, body := post()
	if code != 503 || body["error"] != "temporarily_unavailable" || body["access_token"] != nil {
		t.Errorf("backend down with a cached identity: %d %v", code, body)
	}
}

// denyEnricher refuses everything; failingEnricher cannot answer. They
// stand in for plugins: what a plugin's answer means is the core's
// business (pkg/issue); here only how a refusal is answered over HTTP.
type denyEnricher struct{}

func (denyEnricher) Name() string { return "deny" }
func (denyEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	return &claims.Result{Deny: true, Reason: "not on the list"}, nil
}

type failingEnricher struct{}

func (failingEnricher) Name() string { return "ldap" }
func (failingEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	return nil, errors.New("connection refused")
}

// postAudience asks s for a token for aud, as a tailnet peer would, and
// returns the status, the headers and the decoded JSON answer.
func postAudience(s *Server, aud string) (int, map[string]any) {
	code, _, m := postForm(s, "audience="+aud)
	return code, m
}

func postForm(s *Server, body string) (int, http.Header, map[string]any) {
	req := httptest.NewRequest("POST", "/token", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = "100.64.0.5:4242"
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	var m map[string]any
	json.Unmarshal(rec.Body.Bytes(), &m)
	return rec.Code, rec.Header(), m
}

// TestAnswers: how the token endpoint answers each kind of outcome: RFC
// 6749 JSON with the core's status and code, never a token with an error,
// WWW-Authenticate for an unknown peer, Retry-After while something is
// down, no caching of either.
func TestAnswers(t *testing.T) {
	down := &staticSource{id: alice}
	down.down.Store(true)
	tests := []struct {
		name   string
		s      *Server
		body   string
		status int
		code   string
		desc   string
		header string // a header that must be set, "Name: value"
	}{
		{"token", newTestServer(t, &staticSource{id: alice}), "audience=api", 200, "", "", "Cache-Control: no-store"},
		{"resource spelling", newTestServer(t, &staticSource{id: alice}), "resource=api", 200, "", "", ""},
		{"unknown peer", newTestServer(t, &staticSource{}), "audience=api", 401, "invalid_client", "caller is not a node of this tailnet", `WWW-Authenticate: Tailscale realm="tailnet"`},
		{"tailscaled down", newTestServer(t, down), "audience=api", 503, "temporarily_unavailable", "tailnet identity is unavailable", "Retry-After: 1"},
		{"not allowed", newTestServer(t, &staticSource{id: bobTest}), "audience=api", 403, "access_denied", `bob@other.example may not get tokens for audience "api"`, "Cache-Control: no-store"},
		{"plugin says no", newTestServer(t, &staticSource{id: alice}, denyEnricher{}), "audience=api", 403, "access_denied", "not on the list", ""},
		{"plugin down", newTestServer(t, &staticSource{id: alice}, failingEnricher{}), "audience=api", 503, "temporarily_unavailable", `claims source "ldap" is unavailable`, "Retry-After: 1"},
		{"unknown audience", newTestServer(t, &staticSource{id: alice}), "audience=nope", 400, "invalid_target", `audience "nope" is not configured`, ""},
		{"both spellings differ", newTestServer(t, &staticSource{id: alice}), "audience=api&resource=rsa", 400, "invalid_request", "give either audience or resource, not both", ""},
		{"no audience", newTestServer(t, &staticSource{id: alice}), "scope=x", 400, "invalid_request", "audience (or resource) is required", ""},
		{"twice", newTestServer(t, &staticSource{id: alice}), "audience=api&audience=rsa", 400, "invalid_request", `parameter "audience" is given more than once`, ""},
		{"grant type", newTestServer(t, &staticSource{id: alice}), "grant_type=password&audience=api", 400, "unsupported_grant_type", `grant_type "password" is not supported`, ""},
		{"bad ttl", newTestServer(t, &staticSource{id: alice}), "audience=api&ttl=87600001h", 400, "invalid_request", `ttl "87600001h" is out of range`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, m := postForm(tt.s, tt.body)
			if code != tt.status {
				t.Fatalf("status %d %v, want %d", code, m, tt.status)
			}
			if tt.status == 200 {
				tok, _ := m["access_token"].(string)
				if tok == "" || m["token_type"] != "Bearer" || m["error"] != nil || m["expires_in"] != float64(3600) {
					t.Fatalf("answer %v", m)
				}
				c := verify(t, tok, "ES256")
				if c["sub"] != "user:1" || c["aud"] != "api" || c["iss"] != "https://idp.example" ||
					c["iat"].(float64)-c["nbf"].(float64) != 120 || c["exp"].(float64)-c["iat"].(float64) != 3600 {
					t.Errorf("claims %v", c)
				}
			} else if m["error"] != tt.code || !strings.Contains(fmt.Sprint(m["error_description"]), tt.desc) || m["access_token"] != nil {
				t.Errorf("answer %v, want error %q with %q", m, tt.code, tt.desc)
			}
			if tt.header != "" {
				name, value, _ := strings.Cut(tt.header, ": ")
				if got := h.Get(name); got != value {
					t.Errorf("%s: %q, want %q", name, got, value)
				}
			}
		})
	}
}

// verify checks token's signature against the test manager's JWKS and
// returns its claims.
func verify(t testing.TB, token, alg string) map[string]any {
	t.Helper()
	body, _ := testManager(t).JWKS()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := tok.Claims(set.Key(tok.Headers[0].KeyID)[0].Key, &c); err != nil {
		t.Fatalf("signature: %v", err)
	}
	return c
}

var bobTest = &identity.Identity{Subject: "user:2", UserID: "2", LoginName: "bob@other.example",
	NodeName: "pc.tail1.ts.net", NodeID: "nB", Tailnet: "tail1.ts.net"}

func TestDiscovery(t *testing.T) {
	s := newTestServer(t, &staticSource{id: alice})
	for _, p := range []string{"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"} {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		var m map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || rec.Code != 200 {
			t.Fatalf("%s: %d %v", p, rec.Code, err)
		}
		if m["issuer"] != "https://idp.example" || m["token_endpoint"] != "https://idp.example/token" ||
			m["jwks_uri"] != "https://idp.example/.well-known/jwks.json" {
			t.Errorf("%s = %v", p, m)
		}
	}
}

// BenchmarkToken measures the whole /token handler — form parsing, cached
// identity, policy, claims encoding, signing, response — per algorithm.
// Identity comes from a static source: a real WhoIs costs ~250µs once per
// connection and is measured separately (docs/performance.md).
func BenchmarkToken(b *testing.B) {
	for _, aud := range []struct{ name, alg string }{{"api", "ES256"}, {"eddsa", "EdDSA"}, {"rsa", "RS256"}} {
		b.Run(aud.alg, func(b *testing.B) {
			s := newTestServer(b, &staticSource{id: alice})
			h := s.Handler()
			body := "grant_type=client_credentials&audience=" + aud.name
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				// One connection state per goroutine, as with keep-alive.
				ctx := connContext(context.Background(), fakeConn{})
				rec := &discardWriter{h: make(http.Header)}
				for pb.Next() {
					req := httptest.NewRequest("POST", "/token", strings.NewReader(body)).WithContext(ctx)
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					rec.reset()
					h.ServeHTTP(rec, req)
					if rec.code != 200 {
						b.Fatalf("status %d", rec.code)
					}
				}
			})
		})
	}
}

type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(c int)           { w.code = c }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) reset() {
	clear(w.h)
	w.code = 200
}

type fakeConn struct{ net.Conn }

func (fakeConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(100, 64, 0, 5), Port: 4242} }

// TestLimits checks the bounds NewHTTPServer sets: a client that never
// finishes its headers is cut off, and oversize headers are refused.
func TestLimits(t *testing.T) {
	base := serveReal(t, newTestServer(t, &staticSource{id: alice}))
	addr := strings.TrimPrefix(base, "http://")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /token HTTP/1.1\r\nHost: x\r\n") // and never the rest
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(c)
	if err != nil {
		t.Fatalf("slow client was not disconnected: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("slow client disconnected after %v, want about ReadHeaderTimeout (5s)", d)
	}

	req, _ := http.NewRequest("POST", base+"/token", strings.NewReader("audience=api"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Padding", strings.Repeat("a", 2*maxHeaderBytes))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversize headers: %d, want 431", res.StatusCode)
	}
}

// TestRefusalsAreLogged: callers refused by their identity (the server's
// part) and by the decision (the core's) are both in the log.
func TestRefusalsAreLogged(t *testing.T) {
	var mu sync.Mutex
	var logs []string
	logf := func(f string, a ...any) { mu.Lock(); logs = append(logs, fmt.Sprintf(f, a...)); mu.Unlock() }
	reg, _ := audience.NewRegistry([]audience.Config{{Name: "eng", Allow: []string{"group:eng"}}},
		audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if code, _ := postAudience(newServerWith(t, reg, &staticSource{id: alice}, Config{Logf: logf}), "eng"); code != 403 {
		t.Fatalf("status %d", code)
	}
	if code, _ := postAudience(newServerWith(t, reg, &staticSource{}, Config{Logf: logf}), "eng"); code != 401 {
		t.Fatalf("status %d", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logs) != 2 || !strings.Contains(logs[0], `refused alice@example.com for "eng": no allow rule`) ||
		!strings.Contains(logs[1], "token: refused 100.64.0.5:4242: invalid_client") {
		t.Errorf("logs %q", logs)
	}
}
