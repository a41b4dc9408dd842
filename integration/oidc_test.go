package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/integration/harness"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/sandbox"
	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/tailnet"
)

// The person's login in the sandbox (testcontrol's second user).
const sandboxLogin = "user-2@fake-control.example.net"

// oauth2ProxyVersion is the oauth2-proxy release the tests run.
const oauth2ProxyVersion = "v7.15.6"

func oauth2ProxyBinary(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	t0 := time.Now()
	bin, err := harness.GoTool(ctx, "github.com/oauth2-proxy/oauth2-proxy/v7", oauth2ProxyVersion, "github.com/oauth2-proxy/oauth2-proxy/v7")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("oauth2-proxy %s ready in %v", oauth2ProxyVersion, time.Since(t0).Round(time.Millisecond))
	return bin
}

// whoamiUpstream is the app behind oauth2-proxy: it shows what the proxy
// tells it about the user.
func whoamiUpstream(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>upstream</title><p id="email">%s</p><p id="user">%s</p><p id="groups">%s</p>`,
			html.EscapeString(r.Header.Get("X-Forwarded-Email")), html.EscapeString(r.Header.Get("X-Forwarded-User")),
			html.EscapeString(r.Header.Get("X-Forwarded-Groups")))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// markedBlock finds the code block of a doc whose marker comment starts with
// marker.
func markedBlock(t *testing.T, doc, marker string) string {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range docFenceRE.FindAllStringSubmatch(string(b), -1) {
		if strings.HasPrefix(m[1], marker) {
			return m[3]
		}
	}
	t.Fatalf("%s has no code block marked %q", doc, marker)
	return ""
}

// docOAuth2ProxyFlags returns the flags of the oauth2-proxy command in
// docs/oidc.md, by name.
func docOAuth2ProxyFlags(t *testing.T) map[string]string {
	t.Helper()
	cmd := strings.ReplaceAll(markedBlock(t, "../docs/oidc.md", "oauth2-proxy:"), "\\\n", " ")
	flags := map[string]string{}
	for _, f := range strings.Fields(cmd)[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(f, "--"), "=")
		if !ok || !strings.HasPrefix(f, "--") {
			continue
		}
		flags[name] = strings.Trim(value, "'")
	}
	// --scope='openid email profile groups' was split by Fields.
	if i := strings.Index(cmd, "--scope='"); i >= 0 {
		v := cmd[i+len("--scope='"):]
		flags["scope"] = v[:strings.Index(v, "'")]
	}
	return flags
}

// startOAuth2Proxy runs oauth2-proxy on addr in front of upstream, with
// the command line of docs/oidc.md: its flags, with this test's issuer,
// addresses and secrets, then args. Only --cookie-secure=false (the test
// serves plain http on loopback) and --skip-provider-button are added.
func startOAuth2Proxy(t *testing.T, bin, addr, upstream string, args ...string) *proc {
	t.Helper()
	flags := docOAuth2ProxyFlags(t)
	for _, want := range []string{"provider", "oidc-issuer-url", "client-id", "client-secret", "code-challenge-method", "scope", "email-domain", "redirect-url", "http-address", "upstream", "cookie-secret"} {
		if _, ok := flags[want]; !ok {
			t.Fatalf("docs/oidc.md's oauth2-proxy command lacks --%s", want)
		}
	}
	cookieSecret := base64.RawURLEncoding.EncodeToString([]byte(session.NewSecret())[:32])
	flags["http-address"], flags["upstream"], flags["redirect-url"] = addr, upstream, "http://"+addr+"/oauth2/callback"
	flags["cookie-secret"], flags["cookie-secure"], flags["skip-provider-button"] = cookieSecret[:32], "false", "true"
	var all []string
	for name, v := range flags {
		all = append(all, "--"+name+"="+v)
	}
	// args (client, issuer, endpoints) come last: they win.
	p := startBin(t, bin, nil, append(all, args...)...)
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := httpClient().Get("http://" + addr + "/ping")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("oauth2-proxy did not answer on %s: %v\n%s", addr, err, p.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOAuth2ProxyLogin: a real oauth2-proxy in front of a small upstream
// completes a login through tsidp, driven by a real headless Chromium
// whose traffic reaches tsidp over the tailnet (the person's gateway): the
// upstream sees the tailnet user's email. Then the same with a secretless
// client: the proxy's own calls to the token endpoint come from the
// tagged device (its gateway), whose connection authenticates the client.
func TestOAuth2ProxyLogin(t *testing.T) {
	bin := oauth2ProxyBinary(t)
	browser := newBrowser(t)
	upstream := whoamiUpstream(t)
	secretAddr, tailnetAddr := freeAddr(t), freeAddr(t)
	secret := session.NewSecret()
	cfg := &config.Config{Clients: []clients.Config{
		{ID: "oauth2-proxy", Name: "Internal tools", SecretSHA256: clients.SecretHash(secret),
			RedirectURIs: []string{"http://" + secretAddr + "/oauth2/callback"}, Allow: []string{"*@fake-control.example.net"}},
		{ID: "oauth2-proxy-tailnet", Name: "Internal tools (secretless)", TailnetIdentities: []string{sandbox.Tag},
			RedirectURIs: []string{"http://" + tailnetAddr + "/oauth2/callback"}, Allow: []string{"*@fake-control.example.net"}},
		{ID: "people-elsewhere", SecretSHA256: clients.SecretHash(secret),
			RedirectURIs: []string{"http://" + secretAddr + "/oauth2/callback"}, Allow: []string{"*@example.com"}},
	}}
	sb := startSandboxWith(t, cfg)
	iss := sb.Issuer()

	tests := []struct {
		name, addr string
		args       []string
	}{
		{"client secret", secretAddr, []string{"--client-id=oauth2-proxy", "--client-secret=" + secret, "--oidc-issuer-url=" + iss}},
		{"secretless on the tagged device", tailnetAddr, []string{
			"--client-id=oauth2-proxy-tailnet",
			// oauth2-proxy will not run without a secret; tsidp ignores it
			// for a client that its tailnet connection authenticates.
			"--client-secret=unused",
			"--oidc-issuer-url=" + iss, "--skip-oidc-discovery",
			"--login-url=" + iss + "/authorize",
			"--redeem-url=" + sb.TaggedGW.URL() + "/token", // from the tagged device
			"--oidc-jwks-url=" + iss + "/.well-known/jwks.json",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startOAuth2Proxy(t, bin, tt.addr, upstream, tt.args...)
			ctx, cancel := context.WithTimeout(browser, 60*time.Second)
			defer cancel()
			got, where, err := browse(ctx, "http://"+tt.addr+"/", "email", "email", "user")
			if err != nil {
				screenshot(t, browser, "oauth2-proxy-"+strings.ReplaceAll(tt.name, " ", "-"))
				t.Fatalf("login through oauth2-proxy: %v\noauth2-proxy:\n%s", err, p.log())
			}
			email, user := got["email"], got["user"]
			if email != sandboxLogin || !strings.HasPrefix(where, "http://"+tt.addr+"/") {
				t.Errorf("upstream saw email %q user %q at %s; want %s", email, user, where, sandboxLogin)
			}
			screenshot(t, browser, "oauth2-proxy-"+strings.ReplaceAll(tt.name, " ", "-"))
		})
	}
	t.Run("refused person", func(t *testing.T) {
		// A client whose allow rules do not admit the person: the browser
		// stays on tsidp's page, which says who tsidp sees and why, and
		// is never sent back to the client.
		ctx, cancel := context.WithTimeout(browser, 60*time.Second)
		defer cancel()
		q := url.Values{"response_type": {"code"}, "client_id": {"people-elsewhere"}, "redirect_uri": {"http://" + secretAddr + "/oauth2/callback"},
			"scope": {"openid"}, "state": {"s"}, "code_challenge": {strings.Repeat("A", 43)}, "code_challenge_method": {"S256"}}
		got, where, err := browse(ctx, iss+"/authorize?"+q.Encode(), "detail", "login", "detail")
		if err != nil {
			t.Fatal(err)
		}
		login, detail := got["login"], got["detail"]
		screenshot(t, browser, "oidc-refused")
		if login != sandboxLogin || !strings.Contains(detail, "may not get tokens") || !strings.HasPrefix(where, iss+"/authorize") {
			t.Errorf("refusal page: login %q, detail %q, at %s", login, detail, where)
		}
	})
}

// startSandboxWith runs the sandbox with cfg.
func startSandboxWith(t *testing.T, cfg *config.Config) *sandbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb, err := sandbox.Start(ctx, sandbox.Options{Listen: freeAddr(t), ListenTagged: freeAddr(t), StateDir: shortTempDir(t), Config: cfg, Logf: t.Logf})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

// browserless follows a login's redirects as a browser on the person's
// node would (through the sandbox gateway), up to the client's redirect
// URI, and returns the authorization response; it fails the test if tsidp
// answered with a page instead.
func browserless(t *testing.T, authURL, redirectPrefix string) url.Values {
	t.Helper()
	q, status, body := tryBrowserless(t, authURL, redirectPrefix)
	if q == nil {
		t.Fatalf("no redirect to the client: %d\n%s", status, body)
	}
	return q
}

// tryBrowserless is browserless, returning tsidp's page (status and body)
// instead of the authorization response when there is no redirect.
func tryBrowserless(t *testing.T, authURL, redirectPrefix string) (url.Values, int, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	var final *url.URL
	hc := &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), redirectPrefix) {
			final = req.URL
			return http.ErrUseLastResponse
		}
		return nil
	}}
	res, err := hc.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if final == nil {
		return nil, res.StatusCode, string(body)
	}
	return final.Query(), 0, ""
}

// goRP is a relying party written with coreos/go-oidc and
// golang.org/x/oauth2, as a Go web app would be.
type goRP struct {
	t        *testing.T
	issuer   string
	provider *oidc.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
	endURL   string
}

const goRPCallback = "http://127.0.0.1:9/callback" // never served: the test reads the redirect

func newGoRP(t *testing.T, issuer, clientID, secret string) *goRP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		End string `json:"end_session_endpoint"`
	}
	p.Claims(&meta)
	rp := &goRP{t: t, issuer: issuer, provider: p, endURL: meta.End,
		oauth: oauth2.Config{ClientID: clientID, ClientSecret: secret, Endpoint: p.Endpoint(), RedirectURL: goRPCallback,
			Scopes: []string{oidc.ScopeOpenID, "profile", "email", oidc.ScopeOfflineAccess}},
		verifier: p.Verifier(&oidc.Config{ClientID: clientID}),
	}
	rp.oauth.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	return rp
}

// login runs the code flow with PKCE and a nonce and verifies the ID
// token.
func (rp *goRP) login() (*oauth2.Token, *oidc.IDToken) {
	rp.t.Helper()
	state, nonce, verifier := session.NewID(), session.NewID(), oauth2.GenerateVerifier()
	q := browserless(rp.t, rp.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), goRPCallback)
	if q.Get("state") != state || q.Get("code") == "" || q.Get("iss") != rp.issuer {
		rp.t.Fatalf("authorization response %v", q)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := rp.oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		rp.t.Fatalf("code exchange: %v", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := rp.verifier.Verify(ctx, raw)
	if err != nil || idt.Nonce != nonce {
		rp.t.Fatalf("ID token: %v (nonce %q)", err, idt.Nonce)
	}
	if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
		rp.t.Errorf("at_hash: %v", err)
	}
	return tok, idt
}

// refresh forces a refresh of tok and returns the new token.
func (rp *goRP) refresh(tok *oauth2.Token) (*oauth2.Token, error) {
	stale := *tok
	stale.Expiry = time.Now().Add(-time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return rp.oauth.TokenSource(ctx, &stale).Token()
}

func isInvalidGrant(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == "invalid_grant"
}

// TestGoOIDCRelyingParty: go-oidc and x/oauth2 log in, read userinfo,
// refresh, are refused a reused refresh token (and lose the family), and
// log out.
func TestGoOIDCRelyingParty(t *testing.T) {
	secret := session.NewSecret()
	sb := startSandboxWith(t, &config.Config{Clients: []clients.Config{
		{ID: "go-rp", SecretSHA256: clients.SecretHash(secret), RedirectURIs: []string{goRPCallback},
			PostLogoutRedirectURIs: []string{"http://127.0.0.1:9/bye"}, Allow: []string{"*"}},
	}})
	rp := newGoRP(t, sb.Issuer(), "go-rp", secret)
	ctx := context.Background()

	tok, idt := rp.login()
	var idc struct {
		Email, Sub, Sid string
		Verified        bool `json:"email_verified"`
	}
	idt.Claims(&idc)
	if idt.Subject == "" || idc.Email != sandboxLogin || !idc.Verified || idc.Sid == "" {
		t.Errorf("ID token claims %+v", idc)
	}
	ui, err := rp.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil || ui.Subject != idt.Subject || ui.Email != sandboxLogin {
		t.Fatalf("userinfo %+v, %v", ui, err)
	}

	tok2, err := rp.refresh(tok)
	if err != nil || tok2.RefreshToken == tok.RefreshToken || tok2.AccessToken == tok.AccessToken {
		t.Fatalf("refresh: %v", err)
	}
	if raw, _ := tok2.Extra("id_token").(string); raw == "" {
		t.Error("no ID token on refresh")
	} else if idt2, err := rp.verifier.Verify(ctx, raw); err != nil || idt2.Subject != idt.Subject {
		t.Errorf("refreshed ID token: %v", err)
	}
	// The first refresh token is spent; using it again ends the family.
	if _, err := rp.refresh(tok); !isInvalidGrant(err) {
		t.Errorf("reused refresh token: %v, want invalid_grant", err)
	}
	if _, err := rp.refresh(tok2); !isInvalidGrant(err) {
		t.Errorf("after reuse, the newest refresh token: %v, want invalid_grant", err)
	}

	// Logout ends a session: its refresh token and access token stop.
	tok, idt = rp.login()
	raw, _ := tok.Extra("id_token").(string)
	q := url.Values{"id_token_hint": {raw}, "post_logout_redirect_uri": {"http://127.0.0.1:9/bye"}, "state": {"s1"}}
	back := browserless(t, rp.endURL+"?"+q.Encode(), "http://127.0.0.1:9/bye")
	if back.Get("state") != "s1" {
		t.Errorf("back from logout with %v", back)
	}
	if _, err := rp.refresh(tok); !isInvalidGrant(err) {
		t.Errorf("refresh after logout: %v, want invalid_grant", err)
	}
	if _, err := rp.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil {
		t.Error("userinfo accepted the access token of an ended session")
	}
}

// TestRefreshFollowsTheRealTailnet: with a real control server, a refresh
// fails once the session's node has left the tailnet (its key expired, as
// when it logs out or an admin expires it), and once the tailnet grant
// that let the person in is gone.
func TestRefreshFollowsTheRealTailnet(t *testing.T) {
	secret := session.NewSecret()
	const capName = "tsidp.example/cap/oidc"
	cfg := &config.Config{
		Grants: config.GrantsConfig{Capability: capName},
		Clients: []clients.Config{
			{ID: "go-rp", SecretSHA256: clients.SecretHash(secret), RedirectURIs: []string{goRPCallback}, Allow: []string{"*"}},
			{ID: "granted-rp", SecretSHA256: clients.SecretHash(secret), RedirectURIs: []string{goRPCallback}, Allow: []string{"user:nobody@example.com"}},
		},
	}
	sb := startSandboxWith(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// refreshUntilRefused refreshes until tsidp says invalid_grant (the
	// tailnet's change takes a netmap update to reach tsidp), with the
	// newest refresh token each time.
	refreshUntilRefused := func(t *testing.T, rp *goRP, tok *oauth2.Token) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			next, err := rp.refresh(tok)
			if isInvalidGrant(err) {
				var re *oauth2.RetrieveError
				errors.As(err, &re)
				return re.ErrorDescription
			}
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			tok = next
			if time.Now().After(deadline) {
				t.Fatal("refresh still works 30s after the change")
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	t.Run("node expired", func(t *testing.T) {
		// A node of its own, with its own gateway, so the rest of the
		// sandbox keeps working.
		node, err := sb.Control.StartNode(ctx, tailnet.NodeConfig{Hostname: "bob-laptop"})
		if err != nil {
			t.Fatal(err)
		}
		ip4, _ := sb.Daemon.Node().Server.TailscaleIPs()
		gw, err := tailnet.NewGateway(freeAddr(t), node, "http://"+ip4.String())
		if err != nil {
			t.Fatal(err)
		}
		defer gw.Close()
		// The browser's requests go through bob's gateway; the relying
		// party talks to the issuer (through the person's gateway).
		rp := newGoRP(t, sb.Issuer(), "go-rp", secret)
		authURL := func(u string) string { return strings.Replace(u, sb.Issuer(), gw.URL(), 1) }
		state, nonce, verifier := session.NewID(), session.NewID(), oauth2.GenerateVerifier()
		q := browserless(t, authURL(rp.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))), goRPCallback)
		tok, err := rp.oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		if tok, err = rp.refresh(tok); err != nil {
			t.Fatalf("refresh while the node is on the tailnet: %v", err)
		}
		lc, _ := node.LocalClient()
		st, err := lc.StatusWithoutPeers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		srv := sb.Control.Server()
		n := srv.Node(st.Self.PublicKey)
		if n == nil {
			t.Fatal("control does not know bob's node")
		}
		n.KeyExpiry = time.Now().Add(-time.Minute)
		srv.UpdateNode(n)
		if why := refreshUntilRefused(t, rp, tok); !strings.Contains(why, "no longer a node of this tailnet") {
			t.Errorf("refused for %q", why)
		}
	})

	t.Run("grant lost", func(t *testing.T) {
		srv := sb.Control.Server()
		srv.SetGlobalAppCaps(tailcfg.PeerCapMap{capName: {tailcfg.RawMessage(`{"audiences":["granted-rp"]}`)}})
		rp := newGoRP(t, sb.Issuer(), "granted-rp", secret)
		var tok *oauth2.Token
		deadline := time.Now().Add(30 * time.Second)
		for tok == nil { // until the grant reaches tsidp
			state, verifier := session.NewID(), oauth2.GenerateVerifier()
			q, status, page := tryBrowserless(t, rp.oauth.AuthCodeURL(state, oidc.Nonce("n"), oauth2.S256ChallengeOption(verifier)), goRPCallback)
			if q == nil && status != http.StatusForbidden {
				t.Fatalf("login page %d:\n%s", status, page)
			}
			if q.Get("code") != "" {
				var err error
				if tok, err = rp.oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier)); err != nil {
					t.Fatal(err)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the grant never let the person in: %v", q)
			}
			time.Sleep(200 * time.Millisecond)
		}
		srv.SetGlobalAppCaps(nil)
		if why := refreshUntilRefused(t, rp, tok); !strings.Contains(why, "no longer allowed") {
			t.Errorf("refused for %q", why)
		}
	})
}

// TestRefreshCrashSafety: tsidp is killed (SIGKILL) right after it
// answered a refresh. After a restart the refresh token of that answer
// works, and the one it replaced is refused: the rotation was on disk
// before the answer left.
func TestRefreshCrashSafety(t *testing.T) {
	control, err := tailnet.StartControl(tailnet.ControlConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { control.Close() })
	dir := shortTempDir(t)
	secret := session.NewSecret()
	cfg := writeFile(t, dir, "tsidp.yaml", fmt.Sprintf(`audiences:
  - {name: api, allow: ["*"]}
clients:
  - id: go-rp
    secret_sha256: %s
    redirect_uris: [%q]
    allow: ["*"]
`, clients.SecretHash(secret), goRPCallback))
	args := []string{"serve", "--backend", "tsnet", "--control-url", control.URL(), "--hostname", "idp",
		"--state-dir", dir + "/state", "--config", cfg}
	bin := tsidpBinary(t)
	serve := startBin(t, bin, nil, args...)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	person, err := control.StartNode(ctx, tailnet.NodeConfig{Hostname: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	hc := person.HTTPClient()
	hc.Timeout = 10 * time.Second
	iss := "http://idp." + tailnet.DefaultMagicDNSDomain
	waitHealthy := func(p *proc) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			res, err := hc.Get(iss + "/readyz")
			if err == nil {
				res.Body.Close()
				if res.StatusCode == 200 {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("tsidp not ready over the tailnet: %v\n%s", err, p.log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitHealthy(serve)

	octx := oidc.ClientContext(ctx, hc)
	provider, err := oidc.NewProvider(octx, iss)
	if err != nil {
		t.Fatal(err)
	}
	oc := oauth2.Config{ClientID: "go-rp", ClientSecret: secret, Endpoint: provider.Endpoint(), RedirectURL: goRPCallback,
		Scopes: []string{oidc.ScopeOpenID, oidc.ScopeOfflineAccess}}
	oc.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	verifier := oauth2.GenerateVerifier()
	authURL := oc.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier))
	var code string
	browser := &http.Client{Transport: hc.Transport, Timeout: 10 * time.Second, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), goRPCallback) {
			code = req.URL.Query().Get("code")
			return http.ErrUseLastResponse
		}
		return nil
	}}
	res, err := browser.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if code == "" {
		t.Fatalf("no code: %d\n%s", res.StatusCode, serve.log())
	}
	tok1, err := oc.Exchange(octx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	refresh := func(tok *oauth2.Token) (*oauth2.Token, error) {
		stale := *tok
		stale.Expiry = time.Now().Add(-time.Hour)
		return oc.TokenSource(octx, &stale).Token()
	}
	tok2, err := refresh(tok1)
	if err != nil {
		t.Fatal(err)
	}
	// The answer is in: kill tsidp before it can do anything else.
	serve.cmd.Process.Signal(syscall.SIGKILL)
	if ps := serve.waitExit(t, 10*time.Second); !killedBy(ps, syscall.SIGKILL) {
		t.Fatalf("tsidp exited %v, not killed", ps)
	}
	serve = startBin(t, bin, nil, args...)
	waitHealthy(serve)
	tok3, err := refresh(tok2)
	if err != nil {
		t.Fatalf("the refresh token answered before the crash, after the restart: %v\n%s", err, serve.log())
	}
	if tok3.RefreshToken == tok2.RefreshToken {
		t.Error("the refresh token did not rotate")
	}
	if _, err := refresh(tok1); !isInvalidGrant(err) {
		t.Errorf("the refresh token replaced before the crash: %v, want invalid_grant", err)
	}
}

// TestOIDCDocRecipes: the Grafana recipe in docs/oidc.md names tsidp's
// endpoints as discovery does, scopes tsidp supports, PKCE, and the client
// of the recipe's configuration.
func TestOIDCDocRecipes(t *testing.T) {
	const docIssuer = "https://idp.tail1234.ts.net"
	sb := startSandboxWith(t, &config.Config{})
	res, err := httpClient().Get(sb.Issuer() + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var disc map[string]any
	json.NewDecoder(res.Body).Decode(&disc)
	res.Body.Close()
	ini := map[string]string{}
	for _, line := range strings.Split(markedBlock(t, "../docs/oidc.md", "grafana:"), "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			ini[k] = v
		}
	}
	for key, endpoint := range map[string]string{"auth_url": "authorization_endpoint", "token_url": "token_endpoint", "api_url": "userinfo_endpoint"} {
		got := strings.Replace(ini[key], docIssuer, sb.Issuer(), 1)
		if got != disc[endpoint] {
			t.Errorf("grafana.ini %s = %s; discovery's %s is %v", key, ini[key], endpoint, disc[endpoint])
		}
	}
	for _, sc := range strings.Fields(ini["scopes"]) {
		if !strings.Contains(fmt.Sprint(disc["scopes_supported"]), sc) {
			t.Errorf("grafana.ini asks for scope %s, which tsidp does not offer", sc)
		}
	}
	if ini["use_pkce"] != "true" || ini["client_id"] != "grafana" || ini["login_attribute_path"] != "preferred_username" {
		t.Errorf("grafana.ini: %v", ini)
	}
}
