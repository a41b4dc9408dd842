package oidc_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/grants"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
	"github.com/tsidp/tsidp/pkg/oidc"
	"github.com/tsidp/tsidp/pkg/server"
	"github.com/tsidp/tsidp/pkg/session/boltstore"
)

const (
	issuer   = "https://idp.example"
	capName  = "example.com/cap/tsidp"
	appCB    = "https://app.example/cb"
	secret   = "app-secret-0123456789"
	laptopIP = "100.64.0.5"
	ciIP     = "100.64.0.9"
	otherIP  = "100.64.0.7"
)

// tailnet stands in for tailscaled's WhoIs, by tailnet address: the
// tests move, change and remove nodes. Real WhoIs answers through real
// tailnets are tested in pkg/sandbox and integration/.
type tailnet struct {
	mu    sync.Mutex
	nodes map[netip.Addr]*identity.Identity
	down  bool
}

func (tn *tailnet) Identify(_ context.Context, peer netip.AddrPort) (*identity.Identity, error) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	if tn.down {
		return nil, fmt.Errorf("test: %w", identity.ErrUnavailable)
	}
	id := tn.nodes[peer.Addr()]
	if id == nil {
		return nil, fmt.Errorf("test: %w", identity.ErrUnknownPeer)
	}
	c := *id
	return &c, nil
}

func (tn *tailnet) set(ip string, id *identity.Identity) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	if id == nil {
		delete(tn.nodes, netip.MustParseAddr(ip))
		return
	}
	tn.nodes[netip.MustParseAddr(ip)] = id
}

func alice() *identity.Identity {
	return &identity.Identity{Subject: "user:1", UserID: "1", LoginName: "alice@example.com", DisplayName: "Alice",
		NodeName: "laptop.tail1.ts.net", NodeID: "nLAPTOP", Tailnet: "tail1.ts.net",
		Addresses: []netip.Prefix{netip.MustParsePrefix(laptopIP + "/32")}}
}

func bob() *identity.Identity {
	return &identity.Identity{Subject: "user:2", UserID: "2", LoginName: "bob@other.example", DisplayName: "Bob",
		NodeName: "pc.tail1.ts.net", NodeID: "nPC", Tailnet: "tail1.ts.net",
		Addresses: []netip.Prefix{netip.MustParsePrefix(otherIP + "/32")}}
}

func ciNode() *identity.Identity {
	return &identity.Identity{Subject: "node:nCI", NodeName: "ci.tail1.ts.net", NodeID: "nCI", Tailnet: "tail1.ts.net",
		Tagged: true, Tags: []string{"tag:ci"}, Addresses: []netip.Prefix{netip.MustParsePrefix(ciIP + "/32")}}
}

type env struct {
	t    testing.TB
	tn   *tailnet
	keys *keys.Manager
	h    http.Handler
	now  time.Time
	mu   sync.Mutex
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

var (
	managerOnce sync.Once
	manager     *keys.Manager
)

func testKeys(t testing.TB) *keys.Manager {
	managerOnce.Do(func() {
		dir, err := tempDir()
		if err != nil {
			t.Fatal(err)
		}
		st, err := filestore.Config{Dir: filepath.Join(dir, "keys")}.Open(context.Background(), keys.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := keys.Policy{}
		p.Provision()
		if manager, err = keys.NewManager(context.Background(), st, p, nil); err != nil {
			t.Fatal(err)
		}
	})
	return manager
}

func boolp(b bool) *bool { return &b }

var clientConfigs = []clients.Config{
	{ID: "app", SecretSHA256: clients.SecretHash(secret), RedirectURIs: []string{appCB, "https://app.example/cb?tenant=a"},
		PostLogoutRedirectURIs: []string{"https://app.example/bye"}, Allow: []string{"*@example.com", "group:eng"}},
	{ID: "post", AuthMethod: clients.AuthSecretPost, SecretSHA256: clients.SecretHash(secret), RedirectURIs: []string{appCB}, Allow: []string{"*"}},
	{ID: "spa", AuthMethod: clients.AuthNone, RedirectURIs: []string{appCB}, Allow: []string{"*"}},
	{ID: "cli", AuthMethod: clients.AuthNone, Native: true, RedirectURIs: []string{"http://127.0.0.1/cb"}, Allow: []string{"*"}},
	{ID: "grafana", TailnetIdentities: []string{"tag:ci"}, RedirectURIs: []string{appCB}, Allow: []string{"*"}},
	{ID: "legacy", SecretSHA256: clients.SecretHash(secret), RequirePKCE: boolp(false), RedirectURIs: []string{appCB}, Allow: []string{"*"}},
	{ID: "jumphost", SecretSHA256: clients.SecretHash(secret), Confirm: true, RedirectURIs: []string{appCB}, Allow: []string{"*"}},
	{ID: "devices", SecretSHA256: clients.SecretHash(secret), AllowTaggedDevices: true, RedirectURIs: []string{appCB}, Allow: []string{"tag:ci"}},
	{ID: "granted", SecretSHA256: clients.SecretHash(secret), RedirectURIs: []string{appCB}, Allow: []string{"user:nobody@example.com"}},
	{ID: "eddsa", SecretSHA256: clients.SecretHash(secret), IDTokenAlg: "EdDSA", RedirectURIs: []string{appCB}, Allow: []string{"*"}},
	{ID: "es-app", SecretSHA256: clients.SecretHash(secret), IDTokenAlg: "ES256", RedirectURIs: []string{appCB}, Allow: []string{"*"}},
}

// groupsPlugin stands in for a directory plugin: eng for alice.
type groupsPlugin struct{}

func (groupsPlugin) Name() string { return "directory" }
func (groupsPlugin) Enrich(_ context.Context, r *claims.Request) (*claims.Result, error) {
	if r.Identity.LoginName == "alice@example.com" {
		return &claims.Result{Claims: []claims.Claim{{Name: "groups", Value: json.RawMessage(`["eng"]`)}, {Name: "team", Value: json.RawMessage(`"infra"`)}}}, nil
	}
	return nil, nil
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, tn: &tailnet{nodes: map[netip.Addr]*identity.Identity{}}, keys: testKeys(t),
		now: time.Now().Truncate(time.Second)}
	e.tn.set(laptopIP, alice())
	e.tn.set(otherIP, bob())
	e.tn.set(ciIP, ciNode())
	reg, err := audience.NewRegistry([]audience.Config{{Name: "api", Allow: []string{"*"}}},
		audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := clients.NewRegistry(clientConfigs, clients.Defaults{TTL: time.Hour, Algorithm: "ES256", Algorithms: []string{"ES256", "RS256", "EdDSA"}}, reg)
	if err != nil {
		t.Fatal(err)
	}
	core, err := issue.New(issue.Config{Issuer: issuer, Audiences: reg, Enrichers: []claims.Enricher{grants.New(capName, nil), groupsPlugin{}},
		ClockSkew: time.Minute, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Config{Path: filepath.Join(t.TempDir(), "sessions.db")}.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ident := server.NewIdentifier(e.tn, time.Nanosecond, nil)
	p, err := oidc.New(oidc.Config{Core: core, Clients: cl, Sessions: st, Signer: e.keys, Identify: ident.Identify, Source: e.tn,
		IdleTimeout: 24 * time.Hour, Lifetime: 72 * time.Hour, Now: e.clock, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Core: core, Provider: p, Identifier: ident, Signer: e.keys,
		Algorithms: []string{"ES256", "RS256", "EdDSA"}, JWKSMaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.h = srv.Handler()
	return e
}

// do serves a request from the node at ip.
func (e *env) do(ip string, req *http.Request) *httptest.ResponseRecorder {
	req.RemoteAddr = ip + ":4242"
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec
}

// pkce returns a verifier and its S256 challenge.
func pkce() (verifier, challenge string) {
	verifier = strings.Repeat("v", 20) + fmt.Sprint(time.Now().UnixNano()) + strings.Repeat("x", 10)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

type authz struct {
	client, redirect, scope, state, nonce, challenge, method, prompt string
}

func (a authz) query() url.Values {
	q := url.Values{"response_type": {"code"}, "client_id": {a.client}, "redirect_uri": {a.redirect}, "scope": {a.scope}}
	for k, v := range map[string]string{"state": a.state, "nonce": a.nonce, "code_challenge": a.challenge, "code_challenge_method": a.method, "prompt": a.prompt} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// authorize runs /authorize from ip and returns the answer.
func (e *env) authorize(ip string, a authz) *httptest.ResponseRecorder {
	return e.do(ip, httptest.NewRequest("GET", "/authorize?"+a.query().Encode(), nil))
}

// redirected parses a redirect to the client.
func redirected(t testing.TB, rec *httptest.ResponseRecorder) url.Values {
	t.Helper()
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("status %d, want a redirect:\n%s", rec.Code, rec.Body)
	}
	u, err := url.Parse(rec.Header().Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme+"://"+u.Host+u.Path != appCB {
		t.Fatalf("redirected to %s, want the registered %s", u, appCB)
	}
	return u.Query()
}

// token posts a token request from ip, with Basic credentials when
// basicSecret is set.
func (e *env) token(ip string, form url.Values, basicID, basicSecret string) (int, map[string]any, http.Header) {
	req := httptest.NewRequest("POST", "/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicID != "" {
		req.SetBasicAuth(url.QueryEscape(basicID), url.QueryEscape(basicSecret))
	}
	rec := e.do(ip, req)
	var m map[string]any
	json.Unmarshal(rec.Body.Bytes(), &m)
	return rec.Code, m, rec.Header()
}

// login runs a whole code flow for client app (or a) as the node at ip
// and returns the token answer.
func (e *env) login(ip string, scope string) map[string]any { return e.loginTo("app", ip, scope) }

func (e *env) loginTo(client, ip, scope string) map[string]any {
	e.t.Helper()
	v, ch := pkce()
	q := redirected(e.t, e.authorize(ip, authz{client: client, redirect: appCB, scope: scope, state: "st1", nonce: "n1", challenge: ch, method: "S256"}))
	if q.Get("code") == "" || q.Get("state") != "st1" || q.Get("iss") != issuer {
		e.t.Fatalf("authorization response %v", q)
	}
	code, m, _ := e.token(ip, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, client, secret)
	if code != 200 {
		e.t.Fatalf("code exchange: %d %v", code, m)
	}
	return m
}

// verifyJWT checks tok against the JWKS and returns its typ and claims.
func (e *env) verifyJWT(tok string) (string, map[string]any) {
	e.t.Helper()
	body, _ := e.keys.JWKS()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		e.t.Fatal(err)
	}
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		e.t.Fatal(err)
	}
	h := jws.Signatures[0].Protected
	keys := set.Key(h.KeyID)
	if len(keys) != 1 {
		e.t.Fatalf("kid %s not in the JWKS", h.KeyID)
	}
	payload, err := jws.Verify(keys[0].Key)
	if err != nil {
		e.t.Fatalf("signature: %v", err)
	}
	var c map[string]any
	json.Unmarshal(payload, &c)
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	c["_alg"] = h.Algorithm
	return typ, c
}

func atHash(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

func (e *env) userinfo(tok string) (int, map[string]any, http.Header) {
	req := httptest.NewRequest("GET", "/userinfo", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	rec := e.do(otherIP, req) // a relying party's server, anywhere
	var m map[string]any
	json.Unmarshal(rec.Body.Bytes(), &m)
	return rec.Code, m, rec.Header()
}

func (e *env) refresh(rt string) (int, map[string]any) {
	code, m, _ := e.token(otherIP, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "app", secret)
	return code, m
}

// TestCodeFlow: a whole login: the code comes back with state and iss; the
// exchange answers an RFC 9068 access token, an ID token per OpenID Connect
// Core and a refresh token; userinfo agrees with the ID token.
func TestCodeFlow(t *testing.T) {
	e := newEnv(t)
	m := e.login(laptopIP, "openid profile email groups offline_access")
	if m["token_type"] != "Bearer" || m["expires_in"] != float64(3600) || m["refresh_token"] == nil ||
		m["scope"] != "openid profile email groups offline_access" {
		t.Fatalf("token answer %v", m)
	}
	at, id := m["access_token"].(string), m["id_token"].(string)
	typ, ac := e.verifyJWT(at)
	if typ != "at+jwt" || ac["iss"] != issuer || ac["aud"] != "app" || ac["client_id"] != "app" || ac["sub"] != "user:1" ||
		ac["scope"] != "openid profile email groups offline_access" || ac["jti"] == nil || ac["auth_time"] == nil || ac["_alg"] != "ES256" {
		t.Errorf("access token (%s): %v", typ, ac)
	}
	typ, ic := e.verifyJWT(id)
	if typ != "JWT" || ic["iss"] != issuer || ic["aud"] != "app" || ic["azp"] != "app" || ic["sub"] != "user:1" || ic["nonce"] != "n1" ||
		ic["at_hash"] != atHash(at) || ic["auth_time"] != ac["auth_time"] || ic["sid"] != ac["sid"] || ic["_alg"] != "RS256" {
		t.Errorf("ID token (%s): %v", typ, ic)
	}
	for k, want := range map[string]any{"email": "alice@example.com", "email_verified": true, "name": "Alice",
		"preferred_username": "alice@example.com", "node": "laptop.tail1.ts.net", "team": "infra"} {
		if ic[k] != want {
			t.Errorf("ID token %s = %v, want %v", k, ic[k], want)
		}
	}
	if fmt.Sprint(ic["groups"]) != "[eng]" {
		t.Errorf("ID token groups = %v", ic["groups"])
	}
	code, ui, _ := e.userinfo(at)
	if code != 200 || ui["sub"] != ic["sub"] || ui["email"] != ic["email"] || ui["name"] != ic["name"] || fmt.Sprint(ui["groups"]) != "[eng]" {
		t.Errorf("userinfo %d %v", code, ui)
	}
	for _, k := range []string{"iss", "aud", "exp", "jti", "scope", "client_id"} {
		if _, ok := ui[k]; ok {
			t.Errorf("userinfo has %s", k)
		}
	}
	// POST with the token in the body works too (RFC 6750 §2.2).
	req := httptest.NewRequest("POST", "/userinfo", strings.NewReader("access_token="+at))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if rec := e.do(otherIP, req); rec.Code != 200 {
		t.Errorf("userinfo POST: %d %s", rec.Code, rec.Body)
	}
}

// TestScopesDecideClaims: only the scopes asked for release claims.
func TestScopesDecideClaims(t *testing.T) {
	e := newEnv(t)
	m := e.login(laptopIP, "openid")
	if m["refresh_token"] != nil {
		t.Error("a refresh token without offline_access")
	}
	_, ic := e.verifyJWT(m["id_token"].(string))
	for _, k := range []string{"email", "name", "groups", "node", "team"} {
		if _, ok := ic[k]; ok {
			t.Errorf("ID token with scope openid has %s", k)
		}
	}
	_, ui, _ := e.userinfo(m["access_token"].(string))
	if len(ui) != 1 || ui["sub"] != "user:1" {
		t.Errorf("userinfo with scope openid: %v", ui)
	}
	// OAuth without openid: an access token, no ID token, no userinfo.
	v, ch := pkce()
	q := redirected(t, e.authorize(laptopIP, authz{client: "app", redirect: appCB, scope: "profile", challenge: ch, method: "S256"}))
	_, m, _ = e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, "app", secret)
	if m["access_token"] == nil || m["id_token"] != nil {
		t.Errorf("without openid: %v", m)
	}
	if code, _, _ := e.userinfo(m["access_token"].(string)); code != http.StatusForbidden {
		t.Errorf("userinfo without openid: %d", code)
	}
}

// TestRefresh: refresh tokens rotate on every use; reusing a rotated one
// revokes the family, and the session's access token stops at userinfo.
func TestRefresh(t *testing.T) {
	e := newEnv(t)
	m := e.login(laptopIP, "openid offline_access")
	rt1 := m["refresh_token"].(string)
	code, r2 := e.refresh(rt1)
	if code != 200 || r2["refresh_token"] == rt1 || r2["refresh_token"] == nil || r2["id_token"] == nil {
		t.Fatalf("refresh: %d %v", code, r2)
	}
	_, ic := e.verifyJWT(r2["id_token"].(string))
	if ic["sub"] != "user:1" || ic["nonce"] != nil {
		t.Errorf("refreshed ID token %v", ic)
	}
	rt2 := r2["refresh_token"].(string)
	code, r3 := e.refresh(rt2)
	if code != 200 {
		t.Fatalf("second refresh: %d %v", code, r3)
	}
	// rt1 again: someone holds a copy. The whole family goes.
	if code, m := e.refresh(rt1); code != 400 || m["error"] != "invalid_grant" {
		t.Errorf("reuse of a rotated refresh token: %d %v", code, m)
	}
	if code, m := e.refresh(r3["refresh_token"].(string)); code != 400 || m["error"] != "invalid_grant" {
		t.Errorf("newest refresh token after reuse: %d %v; want the family revoked", code, m)
	}
	if code, _, _ := e.userinfo(r3["access_token"].(string)); code != 401 {
		t.Errorf("userinfo with the revoked session's access token: %d", code)
	}
	// Scopes can narrow, not widen.
	m = e.login(laptopIP, "openid profile offline_access")
	if code, r := e.refresh2(m["refresh_token"].(string), "openid email"); code != 400 || r["error"] != "invalid_scope" {
		t.Errorf("widening refresh: %d %v", code, r)
	}
	if code, r := e.refresh2(m["refresh_token"].(string), "openid offline_access"); code != 200 || r["scope"] != "openid offline_access" {
		t.Errorf("narrowing refresh: %d %v", code, r)
	}
}

func (e *env) refresh2(rt, scope string) (int, map[string]any) {
	code, m, _ := e.token(otherIP, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "scope": {scope}}, "app", secret)
	return code, m
}

// TestRefreshFollowsTheTailnet: each refresh asks the tailnet again.
func TestRefreshFollowsTheTailnet(t *testing.T) {
	tests := []struct {
		name   string
		change func(e *env)
		want   string // error_description substring; "" to succeed
	}{
		{"unchanged", func(*env) {}, ""},
		{"node removed", func(e *env) { e.tn.set(laptopIP, nil) }, "no longer a node of this tailnet"},
		{"node moved to another person", func(e *env) {
			b := bob()
			b.NodeID, b.Addresses = "nLAPTOP", alice().Addresses
			e.tn.set(laptopIP, b)
		}, "belongs to someone else now"},
		{"address reused by another node", func(e *env) {
			a := alice()
			a.NodeID = "nNEW"
			e.tn.set(laptopIP, a)
		}, "gone from the tailnet"},
		{"login rule no longer matches", func(e *env) {
			a := alice()
			a.LoginName = "alice@elsewhere.example"
			e.tn.set(laptopIP, a)
		}, "no longer allowed"},
		{"idle too long", func(e *env) { e.advance(25 * time.Hour) }, "idle too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			rt := e.login(laptopIP, "openid offline_access")["refresh_token"].(string)
			tt.change(e)
			code, m := e.refresh(rt)
			if tt.want == "" {
				if code != 200 {
					t.Fatalf("refresh %d %v", code, m)
				}
				return
			}
			if code != 400 || m["error"] != "invalid_grant" || !strings.Contains(fmt.Sprint(m["error_description"]), tt.want) || m["access_token"] != nil {
				t.Errorf("refresh %d %v; want invalid_grant saying %q", code, m, tt.want)
			}
		})
	}
	t.Run("tailscaled down is not the end", func(t *testing.T) {
		e := newEnv(t)
		rt := e.login(laptopIP, "openid offline_access")["refresh_token"].(string)
		e.tn.mu.Lock()
		e.tn.down = true
		e.tn.mu.Unlock()
		code, m, h := e.token(otherIP, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "app", secret)
		if code != 503 || m["error"] != "temporarily_unavailable" || h.Get("Retry-After") == "" {
			t.Errorf("refresh with tailscaled down: %d %v", code, m)
		}
		e.tn.mu.Lock()
		e.tn.down = false
		e.tn.mu.Unlock()
		if code, m := e.refresh(rt); code != 200 {
			t.Errorf("refresh once tailscaled is back: %d %v", code, m)
		}
	})
	t.Run("grant lost", func(t *testing.T) {
		e := newEnv(t)
		b := bob()
		b.Caps = tailcfg.PeerCapMap{capName: {tailcfg.RawMessage(`{"audiences":["granted"]}`)}}
		e.tn.set(otherIP, b)
		v, ch := pkce()
		q := redirected(t, e.authorize(otherIP, authz{client: "granted", redirect: appCB, scope: "openid offline_access", challenge: ch, method: "S256"}))
		code, m, _ := e.token(otherIP, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, "granted", secret)
		if code != 200 {
			t.Fatalf("granted login: %d %v", code, m)
		}
		e.tn.set(otherIP, bob()) // the grant is gone from the policy file
		code, r, _ := e.token(otherIP, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}}, "granted", secret)
		if code != 400 || r["error"] != "invalid_grant" || !strings.Contains(fmt.Sprint(r["error_description"]), "no longer allowed") {
			t.Errorf("refresh after the grant was lost: %d %v", code, r)
		}
	})
}

// TestAuthorizeRefusals: problems with the client or redirect URI are
// shown, never redirected; others go back to the client as errors.
func TestAuthorizeRefusals(t *testing.T) {
	e := newEnv(t)
	_, ch := pkce()
	good := authz{client: "app", redirect: appCB, scope: "openid", state: "s", challenge: ch, method: "S256"}
	pages := []struct {
		name   string
		a      authz
		ip     string
		status int
		text   string
	}{
		{"unknown client", authz{client: "nope", redirect: appCB, scope: "openid", challenge: ch, method: "S256"}, laptopIP, 400, "not registered with tsidp"},
		{"unregistered redirect", authz{client: "app", redirect: "https://evil.example/cb", scope: "openid", challenge: ch, method: "S256"}, laptopIP, 400, "has not registered"},
		{"redirect with another path", authz{client: "app", redirect: appCB + "/x", scope: "openid", challenge: ch, method: "S256"}, laptopIP, 400, "has not registered"},
		{"redirect prefix", authz{client: "app", redirect: "https://app.example/c", scope: "openid", challenge: ch, method: "S256"}, laptopIP, 400, "has not registered"},
		{"web client's loopback port", authz{client: "spa", redirect: "http://127.0.0.1:9/cb", scope: "openid", challenge: ch, method: "S256"}, laptopIP, 400, "has not registered"},
		{"disallowed person", good, otherIP, 403, "bob@other.example may not get tokens"},
		{"tagged device", authz{client: "spa", redirect: appCB, scope: "openid", challenge: ch, method: "S256"}, ciIP, 403, "may not log in"},
		{"not on the tailnet", good, "192.0.2.1", 401, "Open the application from a device on the tailnet"},
	}
	for _, tt := range pages {
		t.Run(tt.name, func(t *testing.T) {
			rec := e.authorize(tt.ip, tt.a)
			if rec.Code != tt.status || rec.Header().Get("Location") != "" || !strings.Contains(rec.Body.String(), tt.text) {
				t.Errorf("%d, Location %q:\n%s\nwant %d with %q", rec.Code, rec.Header().Get("Location"), rec.Body, tt.status, tt.text)
			}
			checkPageHeaders(t, rec)
		})
	}
	t.Run("refusal page says who tsidp sees", func(t *testing.T) {
		body := e.authorize(otherIP, good).Body.String()
		if !strings.Contains(body, `<dd id="login">bob@other.example</dd>`) || !strings.Contains(body, "pc.tail1.ts.net") {
			t.Errorf("page:\n%s", body)
		}
	})
	redirects := []struct {
		name string
		a    authz
		code string
		desc string
	}{
		{"no PKCE", authz{client: "app", redirect: appCB, scope: "openid", state: "s"}, "invalid_request", "PKCE is required"},
		{"plain PKCE", authz{client: "app", redirect: appCB, scope: "openid", state: "s", challenge: ch, method: "plain"}, "invalid_request", "plain is not supported"},
		{"PKCE without method is plain", authz{client: "app", redirect: appCB, scope: "openid", state: "s", challenge: ch}, "invalid_request", "must be S256"},
		{"malformed challenge", authz{client: "app", redirect: appCB, scope: "openid", state: "s", challenge: "short", method: "S256"}, "invalid_request", "not an S256 challenge"},
		{"public client without PKCE", authz{client: "spa", redirect: appCB, scope: "openid", state: "s"}, "invalid_request", "PKCE is required"},
		{"legacy client without nonce", authz{client: "legacy", redirect: appCB, scope: "openid", state: "s"}, "invalid_request", "must send a nonce"},
		{"no scope", authz{client: "app", redirect: appCB, state: "s", challenge: ch, method: "S256"}, "invalid_scope", "scope is required"},
		{"unknown scope", authz{client: "app", redirect: appCB, scope: "openid admin", state: "s", challenge: ch, method: "S256"}, "invalid_scope", `scope "admin"`},
		{"prompt none with confirmation", authz{client: "jumphost", redirect: appCB, scope: "openid", state: "s", challenge: ch, method: "S256", prompt: "none"}, "consent_required", ""},
	}
	for _, tt := range redirects {
		t.Run(tt.name, func(t *testing.T) {
			q := redirected(t, e.authorize(laptopIP, tt.a))
			if q.Get("error") != tt.code || !strings.Contains(q.Get("error_description"), tt.desc) || q.Get("state") != "s" || q.Get("iss") != issuer || q.Get("code") != "" {
				t.Errorf("redirect %v; want error %s (%q) with state and iss", q, tt.code, tt.desc)
			}
		})
	}
	t.Run("response_type", func(t *testing.T) {
		q := good.query()
		q.Set("response_type", "token")
		v := redirected(t, e.do(laptopIP, httptest.NewRequest("GET", "/authorize?"+q.Encode(), nil)))
		if v.Get("error") != "unsupported_response_type" {
			t.Errorf("implicit flow: %v", v)
		}
	})
	t.Run("redirect URI keeps its query", func(t *testing.T) {
		a := good
		a.redirect = "https://app.example/cb?tenant=a"
		rec := e.authorize(laptopIP, a)
		u, _ := url.Parse(rec.Header().Get("Location"))
		if u.Query().Get("tenant") != "a" || u.Query().Get("code") == "" {
			t.Errorf("redirect %s", u)
		}
	})
}

// checkPageHeaders: pages load nothing, run no script, cannot be framed.
func checkPageHeaders(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	csp := rec.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "form-action 'self'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "script-src") || strings.Contains(csp, "unsafe") {
		t.Errorf("CSP allows scripts: %q", csp)
	}
	if rec.Header().Get("X-Frame-Options") != "DENY" || rec.Header().Get("Cache-Control") != "no-store" ||
		!strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Errorf("page headers %v", rec.Header())
	}
	if strings.Contains(strings.ToLower(rec.Body.String()), "<script") {
		t.Error("a page has a script")
	}
}

// TestCodeExchangeRefusals: each is an RFC 6749 error, and nothing is
// issued.
func TestCodeExchangeRefusals(t *testing.T) {
	e := newEnv(t)
	codeFor := func(client string) (code, verifier string) {
		v, ch := pkce()
		q := redirected(t, e.authorize(laptopIP, authz{client: client, redirect: appCB, scope: "openid offline_access", challenge: ch, method: "S256", nonce: "n"}))
		return q.Get("code"), v
	}
	exchange := func(form url.Values, id, sec string) (int, map[string]any) {
		c, m, _ := e.token(laptopIP, form, id, sec)
		return c, m
	}
	form := func(code, v string) url.Values {
		f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCB}}
		if v != "" {
			f.Set("code_verifier", v)
		}
		return f
	}
	tests := []struct {
		name   string
		run    func() (int, map[string]any)
		status int
		code   string
	}{
		{"missing verifier", func() (int, map[string]any) { c, _ := codeFor("app"); return exchange(form(c, ""), "app", secret) }, 400, "invalid_grant"},
		{"wrong verifier", func() (int, map[string]any) {
			c, _ := codeFor("app")
			w, _ := pkce()
			return exchange(form(c, w), "app", secret)
		}, 400, "invalid_grant"},
		{"malformed verifier", func() (int, map[string]any) { c, _ := codeFor("app"); return exchange(form(c, "short"), "app", secret) }, 400, "invalid_request"},
		{"redirect mismatch", func() (int, map[string]any) {
			c, v := codeFor("app")
			f := form(c, v)
			f.Set("redirect_uri", "https://app.example/cb?tenant=a")
			return exchange(f, "app", secret)
		}, 400, "invalid_grant"},
		{"another client's code", func() (int, map[string]any) { c, v := codeFor("app"); return exchange(form(c, v), "legacy", secret) }, 400, "invalid_grant"},
		{"unknown client", func() (int, map[string]any) { c, v := codeFor("app"); return exchange(form(c, v), "nope", secret) }, 401, "invalid_client"},
		{"wrong secret", func() (int, map[string]any) { c, v := codeFor("app"); return exchange(form(c, v), "app", "guess") }, 401, "invalid_client"},
		{"no client authentication", func() (int, map[string]any) {
			c, v := codeFor("app")
			f := form(c, v)
			f.Set("client_id", "app")
			return exchange(f, "", "")
		}, 401, "invalid_client"},
		{"secret_post client with Basic", func() (int, map[string]any) { c, v := codeFor("post"); return exchange(form(c, v), "post", secret) }, 401, "invalid_client"},
		{"secretless client from another node", func() (int, map[string]any) {
			c, v := codeFor("grafana")
			f := form(c, v)
			f.Set("client_id", "grafana")
			return exchange(f, "", "") // from the laptop, not tag:ci
		}, 401, "invalid_client"},
		{"unknown code", func() (int, map[string]any) { _, v := codeFor("app"); return exchange(form("nope", v), "app", secret) }, 400, "invalid_grant"},
		{"expired code", func() (int, map[string]any) {
			c, v := codeFor("app")
			e.advance(oidc.CodeTTL)
			return exchange(form(c, v), "app", secret)
		}, 400, "invalid_grant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, m := tt.run()
			if code != tt.status || m["error"] != tt.code || m["access_token"] != nil || m["id_token"] != nil || m["refresh_token"] != nil {
				t.Errorf("%d %v; want %d %s and no token", code, m, tt.status, tt.code)
			}
		})
	}
	t.Run("a failed exchange leaves the code to its client", func(t *testing.T) {
		c, v := codeFor("app")
		w, _ := pkce()
		exchange(form(c, w), "app", secret)
		if code, m := exchange(form(c, v), "app", secret); code != 200 {
			t.Errorf("the right verifier after a wrong one: %d %v", code, m)
		}
	})
}

// TestCodeReuseRevokes: a second redemption is refused, and what the
// first issued is revoked (RFC 6749 §4.1.2).
func TestCodeReuseRevokes(t *testing.T) {
	e := newEnv(t)
	v, ch := pkce()
	q := redirected(t, e.authorize(laptopIP, authz{client: "app", redirect: appCB, scope: "openid offline_access", challenge: ch, method: "S256"}))
	f := url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}
	code, first, _ := e.token(laptopIP, f, "app", secret)
	if code != 200 {
		t.Fatal(first)
	}
	if c, _, _ := e.userinfo(first["access_token"].(string)); c != 200 {
		t.Fatalf("userinfo before reuse: %d", c)
	}
	code, second, _ := e.token(laptopIP, f, "app", secret)
	if code != 400 || second["error"] != "invalid_grant" || second["access_token"] != nil {
		t.Errorf("second redemption: %d %v", code, second)
	}
	if c, m := e.refresh(first["refresh_token"].(string)); c != 400 {
		t.Errorf("refresh token of the reused code: %d %v", c, m)
	}
	if c, _, _ := e.userinfo(first["access_token"].(string)); c != 401 {
		t.Errorf("access token of the reused code at userinfo: %d", c)
	}
}

// TestClientAuthentication: every method, and that a client cannot use
// another method than its own.
func TestClientAuthentication(t *testing.T) {
	e := newEnv(t)
	run := func(client, ip string, creds func(f url.Values) (string, string)) int {
		v, ch := pkce()
		q := redirected(t, e.authorize(laptopIP, authz{client: client, redirect: appCB, scope: "openid", challenge: ch, method: "S256"}))
		f := url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}
		id, sec := creds(f)
		code, m, _ := e.token(ip, f, id, sec)
		if code != 200 {
			t.Logf("%s: %d %v", client, code, m)
		}
		return code
	}
	form := func(id, sec string) func(f url.Values) (string, string) {
		return func(f url.Values) (string, string) {
			f.Set("client_id", id)
			if sec != "" {
				f.Set("client_secret", sec)
			}
			return "", ""
		}
	}
	basic := func(id, sec string) func(f url.Values) (string, string) {
		return func(url.Values) (string, string) { return id, sec }
	}
	tests := []struct {
		name   string
		client string
		ip     string
		creds  func(url.Values) (string, string)
		want   int
	}{
		{"client_secret_basic", "app", otherIP, basic("app", secret), 200},
		{"client_secret_basic sent as post", "app", otherIP, form("app", secret), 401},
		{"client_secret_post", "post", otherIP, form("post", secret), 200},
		{"public", "spa", otherIP, form("spa", ""), 200},
		{"public with a secret", "spa", otherIP, form("spa", "x"), 401},
		{"secretless from its node", "grafana", ciIP, form("grafana", ""), 200},
		{"secretless with a placeholder secret", "grafana", ciIP, form("grafana", "x"), 200},
		{"secretless with Basic from another node", "grafana", otherIP, basic("grafana", "x"), 401},
		{"secretless from another node", "grafana", otherIP, form("grafana", ""), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(tt.client, tt.ip, tt.creds); got != tt.want {
				t.Errorf("status %d, want %d", got, tt.want)
			}
		})
	}
	t.Run("Basic failure is challenged", func(t *testing.T) {
		_, _, h := e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, "app", "wrong")
		if !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("WWW-Authenticate %q", h.Get("WWW-Authenticate"))
		}
	})
}

// TestNativeLoopbackRedirect: a native app's loopback redirect may use any
// port (RFC 8252 §7.3), and the code must come back to that same URI.
func TestNativeLoopbackRedirect(t *testing.T) {
	e := newEnv(t)
	v, ch := pkce()
	cb := "http://127.0.0.1:51823/cb"
	rec := e.authorize(laptopIP, authz{client: "cli", redirect: cb, scope: "openid", challenge: ch, method: "S256"})
	u, _ := url.Parse(rec.Header().Get("Location"))
	if rec.Code != http.StatusSeeOther || u.Host != "127.0.0.1:51823" || u.Query().Get("code") == "" {
		t.Fatalf("%d %s", rec.Code, u)
	}
	f := url.Values{"grant_type": {"authorization_code"}, "code": {u.Query().Get("code")}, "redirect_uri": {cb}, "code_verifier": {v}, "client_id": {"cli"}}
	if code, m, _ := e.token(laptopIP, f, "", ""); code != 200 {
		t.Errorf("exchange: %d %v", code, m)
	}
}

// TestLegacyClientWithoutPKCE: a confidential client that opted out of
// PKCE logs in with a nonce, which the ID token carries.
func TestLegacyClientWithoutPKCE(t *testing.T) {
	e := newEnv(t)
	q := redirected(t, e.authorize(laptopIP, authz{client: "legacy", redirect: appCB, scope: "openid", nonce: "n-legacy"}))
	code, m, _ := e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}}, "legacy", secret)
	if code != 200 {
		t.Fatalf("%d %v", code, m)
	}
	if _, ic := e.verifyJWT(m["id_token"].(string)); ic["nonce"] != "n-legacy" {
		t.Errorf("nonce %v", ic["nonce"])
	}
}

// TestTaggedDeviceLogin: a client that allows tagged devices lets them log
// in, as their node.
func TestTaggedDeviceLogin(t *testing.T) {
	e := newEnv(t)
	v, ch := pkce()
	q := redirected(t, e.authorize(ciIP, authz{client: "devices", redirect: appCB, scope: "openid profile", challenge: ch, method: "S256"}))
	code, m, _ := e.token(ciIP, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, "devices", secret)
	if code != 200 {
		t.Fatalf("%d %v", code, m)
	}
	_, ic := e.verifyJWT(m["id_token"].(string))
	if ic["sub"] != "node:nCI" || fmt.Sprint(ic["tags"]) != "[tag:ci]" || ic["email"] != nil {
		t.Errorf("ID token %v", ic)
	}
}

// TestEdDSAIDToken: a client may ask for another ID token algorithm;
// at_hash then uses SHA-512, as for Ed25519.
func TestEdDSAIDToken(t *testing.T) {
	e := newEnv(t)
	v, ch := pkce()
	q := redirected(t, e.authorize(laptopIP, authz{client: "eddsa", redirect: appCB, scope: "openid", challenge: ch, method: "S256"}))
	_, m, _ := e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, "eddsa", secret)
	_, ic := e.verifyJWT(m["id_token"].(string))
	if ic["_alg"] != "EdDSA" || ic["at_hash"] == atHash(m["access_token"].(string)) || len(ic["at_hash"].(string)) != 43 {
		t.Errorf("EdDSA ID token %v", ic)
	}
}

// TestConfirmation: a client on a shared machine asks the person first,
// with a form that works once, from tsidp's page, for the person it was
// shown to.
func TestConfirmation(t *testing.T) {
	e := newEnv(t)
	v, ch := pkce()
	a := authz{client: "jumphost", redirect: appCB, scope: "openid email", state: "st", challenge: ch, method: "S256"}
	rec := e.authorize(laptopIP, a)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "Sign in to <strong id=\"client\">jumphost</strong> as <strong>alice@example.com</strong>") {
		t.Fatalf("confirmation page %d:\n%s", rec.Code, rec.Body)
	}
	checkPageHeaders(t, rec)
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "form-action 'self' https://app.example") {
		t.Errorf("CSP %q: the form's answer redirects to the client", csp)
	}
	token := between(rec.Body.String(), `name="request" value="`, `"`)
	post := func(ip, action, tok string, hdr map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/authorize/confirm", strings.NewReader(url.Values{"request": {tok}, "action": {action}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		return e.do(ip, req)
	}
	if rec := post(laptopIP, "allow", token, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}); rec.Code != 403 || rec.Header().Get("Location") != "" {
		t.Errorf("cross-site confirmation: %d %s", rec.Code, rec.Header().Get("Location"))
	}
	if rec := post(otherIP, "allow", token, nil); rec.Code != 400 || rec.Header().Get("Location") != "" {
		t.Errorf("confirmation by another person: %d", rec.Code)
	}
	q := redirected(t, post(laptopIP, "allow", token, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": issuer}))
	if q.Get("code") == "" || q.Get("state") != "st" {
		t.Fatalf("confirmed: %v", q)
	}
	if rec := post(laptopIP, "allow", token, nil); rec.Code != 400 || rec.Header().Get("Location") != "" {
		t.Errorf("second confirmation: %d", rec.Code)
	}
	code, m, _ := e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {appCB}, "code_verifier": {v}}, "jumphost", secret)
	if code != 200 {
		t.Errorf("exchange after confirmation: %d %v", code, m)
	}
	// The pending token is no code.
	if code, _, _ := e.token(laptopIP, url.Values{"grant_type": {"authorization_code"}, "code": {token}, "redirect_uri": {appCB}, "code_verifier": {v}}, "jumphost", secret); code != 400 {
		t.Errorf("the confirmation token redeemed as a code: %d", code)
	}
	// Cancel goes back to the client as access_denied.
	rec = e.authorize(laptopIP, a)
	q = redirected(t, post(laptopIP, "deny", between(rec.Body.String(), `name="request" value="`, `"`), nil))
	if q.Get("error") != "access_denied" || q.Get("code") != "" {
		t.Errorf("declined: %v", q)
	}
}

func between(s, a, b string) string {
	_, s, _ = strings.Cut(s, a)
	s, _, _ = strings.Cut(s, b)
	return s
}

// TestLogout: RP-initiated logout ends the session: refresh and userinfo
// stop at once, and the browser goes back only to a registered address.
func TestLogout(t *testing.T) {
	e := newEnv(t)
	m := e.login(laptopIP, "openid offline_access")
	q := url.Values{"id_token_hint": {m["id_token"].(string)}, "post_logout_redirect_uri": {"https://evil.example/"}, "state": {"x"}}
	rec := e.do(laptopIP, httptest.NewRequest("GET", "/logout?"+q.Encode(), nil))
	if rec.Code != 400 || rec.Header().Get("Location") != "" {
		t.Errorf("logout to an unregistered address: %d %s", rec.Code, rec.Header().Get("Location"))
	}
	if code, _ := e.refresh(m["refresh_token"].(string)); code != 200 {
		t.Fatalf("a refused logout ended the session")
	}
	// The refresh rotated the token; the ID token still names the session.
	q.Set("post_logout_redirect_uri", "https://app.example/bye")
	rec = e.do(laptopIP, httptest.NewRequest("GET", "/logout?"+q.Encode(), nil))
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "https://app.example/bye?state=x" {
		t.Fatalf("logout: %d %s", rec.Code, rec.Header().Get("Location"))
	}
	m2 := e.login(laptopIP, "openid offline_access") // another session, not ended
	if code, _, _ := e.userinfo(m["access_token"].(string)); code != 401 {
		t.Errorf("userinfo after logout: %d", code)
	}
	if code, _, _ := e.userinfo(m2["access_token"].(string)); code != 200 {
		t.Errorf("another session after logout: %d", code)
	}
	// Without a hint there is nothing to end, and no redirect.
	rec = e.do(laptopIP, httptest.NewRequest("GET", "/logout", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "Nothing to sign out of") {
		t.Errorf("logout without a hint: %d %s", rec.Code, rec.Body)
	}
	// A forged hint is refused.
	rec = e.do(laptopIP, httptest.NewRequest("GET", "/logout?id_token_hint=a.b.c", nil))
	if rec.Code != 400 {
		t.Errorf("forged hint: %d", rec.Code)
	}
}

// TestUserInfoRefusals: RFC 6750 errors with a WWW-Authenticate header.
func TestUserInfoRefusals(t *testing.T) {
	e := newEnv(t)
	m := e.login(laptopIP, "openid")
	_, _, _ = e.userinfo(m["access_token"].(string))
	id := m["id_token"].(string)
	tests := []struct {
		name, tok string
		status    int
	}{
		{"garbage", "abc", 401},
		{"an ID token", id, 401},
		{"tampered", m["access_token"].(string)[:len(m["access_token"].(string))-4] + "AAAA", 401},
	}
	for _, tt := range tests {
		code, body, h := e.userinfo(tt.tok)
		if code != tt.status || body["error"] != "invalid_token" || !strings.Contains(h.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("%s: %d %v %q", tt.name, code, body, h.Get("WWW-Authenticate"))
		}
	}
	rec := e.do(otherIP, httptest.NewRequest("GET", "/userinfo", nil))
	if rec.Code != 401 || !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("no token: %d %v", rec.Code, rec.Header())
	}
	e.advance(2 * time.Hour)
	if code, _, _ := e.userinfo(m["access_token"].(string)); code != 401 {
		t.Errorf("expired token: %d", code)
	}
}

// TestDiscovery: both documents hold the same, complete values.
func TestDiscovery(t *testing.T) {
	e := newEnv(t)
	var docs []map[string]any
	for _, p := range []string{"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"} {
		rec := e.do(otherIP, httptest.NewRequest("GET", p, nil))
		var m map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || rec.Code != 200 {
			t.Fatalf("%s: %d %v", p, rec.Code, err)
		}
		docs = append(docs, m)
	}
	a, _ := json.Marshal(docs[0])
	b, _ := json.Marshal(docs[1])
	if string(a) != string(b) {
		t.Errorf("the documents differ:\n%s\n%s", a, b)
	}
	m := docs[0]
	for k, want := range map[string]string{
		"authorization_endpoint": issuer + "/authorize", "userinfo_endpoint": issuer + "/userinfo",
		"end_session_endpoint": issuer + "/logout", "token_endpoint": issuer + "/token",
		"response_types_supported": "[code]", "code_challenge_methods_supported": "[S256]",
		"authorization_response_iss_parameter_supported": "true",
		"grant_types_supported":                          "[client_credentials authorization_code refresh_token]",
		"token_endpoint_auth_methods_supported":          "[none client_secret_basic client_secret_post]",
	} {
		if got := fmt.Sprint(m[k]); got != want {
			t.Errorf("%s = %s, want %s", k, got, want)
		}
	}
	for _, s := range []string{"openid", "profile", "email", "groups", "offline_access"} {
		if !strings.Contains(fmt.Sprint(m["scopes_supported"]), s) {
			t.Errorf("scopes_supported %v lacks %s", m["scopes_supported"], s)
		}
	}
}

// TestClientCredentialsUnchanged: POST /token keeps working as before.
func TestClientCredentialsUnchanged(t *testing.T) {
	e := newEnv(t)
	code, m, _ := e.token(laptopIP, url.Values{"audience": {"api"}}, "", "")
	if code != 200 {
		t.Fatalf("%d %v", code, m)
	}
	if typ, c := e.verifyJWT(m["access_token"].(string)); typ != "JWT" || c["aud"] != "api" || c["client_id"] != nil {
		t.Errorf("%s %v", typ, c)
	}
}
