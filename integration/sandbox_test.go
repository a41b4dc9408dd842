package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"tailscale.com/tsnet"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/sandbox"
)

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startSandbox runs the sandbox with three audiences, one per algorithm, and
// some restricted ones.
func startSandbox(t *testing.T) *sandbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := &config.Config{
		Audiences: []audience.Config{
			{Name: "https://es256.example", Allow: []string{"*"}, Algorithm: "ES256"},
			{Name: "https://rs256.example", Allow: []string{"*"}, Algorithm: "RS256", TTL: 10 * time.Minute, MaxTTL: time.Hour},
			{Name: "https://eddsa.example", Allow: []string{"*"}, Algorithm: "EdDSA", Scopes: []string{"read", "write"}},
			{Name: "people-only", Allow: []string{"*@fake-control.example.net"}},
			{Name: "ci-only", Allow: []string{sandbox.Tag}},
		},
	}
	sb, err := sandbox.Start(ctx, sandbox.Options{
		Listen: freeAddr(t), ListenTagged: freeAddr(t), StateDir: shortTempDir(t), Config: cfg, Logf: t.Logf,
	})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

type tokenAnswer struct {
	AccessToken      string `json:"access_token"`
	TokenType        string `json:"token_type"`
	ExpiresIn        int64  `json:"expires_in"`
	IssuedTokenType  string `json:"issued_token_type"`
	Scope            string `json:"scope"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// postToken posts form to baseURL/token and decodes the answer.
func postToken(t testing.TB, hc *http.Client, baseURL string, form url.Values) (int, tokenAnswer, http.Header) {
	t.Helper()
	res, err := hc.Post(baseURL+"/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatalf("POST /token: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var ta tokenAnswer
	if err := json.Unmarshal(body, &ta); err != nil {
		t.Fatalf("POST /token: %d, body is not JSON: %q", res.StatusCode, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	return res.StatusCode, ta, res.Header
}

// selfOf reads a node's own identity as control assigned it.
func selfOf(t *testing.T, n *tsnet.Server) (userID, login, stableID, dnsName string) {
	t.Helper()
	lc, err := n.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	up := st.User[st.Self.UserID]
	return fmt.Sprint(int64(st.Self.UserID)), up.LoginName, string(st.Self.ID), strings.TrimSuffix(st.Self.DNSName, ".")
}

func TestSandboxTokensVerifyWithGoJoseAndGoOIDC(t *testing.T) {
	sb := startSandbox(t)
	iss := sb.Issuer()
	hc := &http.Client{Timeout: 10 * time.Second}

	userID, login, personNode, personDNS := selfOf(t, sb.Person)
	_, _, taggedNode, taggedDNS := selfOf(t, sb.Tagged)

	ctx := oidc.ClientContext(context.Background(), hc)
	provider, err := oidc.NewProvider(ctx, iss)
	if err != nil {
		t.Fatalf("go-oidc discovery: %v", err)
	}

	for _, tc := range []struct{ aud, alg string }{
		{"https://es256.example", "ES256"},
		{"https://rs256.example", "RS256"},
		{"https://eddsa.example", "EdDSA"},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			// The person, through their gateway.
			status, ta, hdr := postToken(t, hc, sb.Gateway.URL(), url.Values{"audience": {tc.aud}})
			if status != 200 || ta.AccessToken == "" {
				t.Fatalf("person: %d %+v", status, ta)
			}
			if ta.TokenType != "Bearer" || ta.IssuedTokenType != "urn:ietf:params:oauth:token-type:jwt" || ta.ExpiresIn <= 0 {
				t.Errorf("answer = %+v", ta)
			}
			if hdr.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control = %q", hdr.Get("Cache-Control"))
			}
			verifier := provider.Verifier(&oidc.Config{ClientID: tc.aud, SupportedSigningAlgs: []string{tc.alg}})
			idt, err := verifier.Verify(ctx, ta.AccessToken)
			if err != nil {
				t.Fatalf("go-oidc rejects the person's %s token: %v", tc.alg, err)
			}
			var c map[string]any
			if err := idt.Claims(&c); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{
				"iss": iss, "sub": "user:" + userID, "aud": tc.aud, "user_id": userID,
				"login_name": login, "email": login, "node": personDNS, "node_id": personNode, "tailnet": sandbox.Domain,
			}
			for k, v := range want {
				if c[k] != v {
					t.Errorf("person claim %s = %v, want %v", k, c[k], v)
				}
			}
			if exp, iat := c["exp"].(float64), c["iat"].(float64); int64(exp-iat) != ta.ExpiresIn {
				t.Errorf("exp-iat = %v, expires_in = %d", exp-iat, ta.ExpiresIn)
			}

			// The tagged device, through its gateway, verified with go-jose
			// against the JWKS fetched over HTTP.
			status, ta, _ = postToken(t, hc, sb.TaggedGW.URL(), url.Values{"grant_type": {"client_credentials"}, "resource": {tc.aud}})
			if status != 200 {
				t.Fatalf("tagged: %d %+v", status, ta)
			}
			claims := verifyGoJose(t, hc, iss, ta.AccessToken, tc.alg, tc.aud)
			if claims["sub"] != "node:"+taggedNode || claims["tagged"] != true || claims["node"] != taggedDNS {
				t.Errorf("tagged claims = %v", claims)
			}
			if tags, _ := claims["tags"].([]any); len(tags) != 1 || tags[0] != sandbox.Tag {
				t.Errorf("tags = %v", claims["tags"])
			}
			for _, k := range []string{"user_id", "login_name", "email", "name"} {
				if _, ok := claims[k]; ok {
					t.Errorf("tagged token carries user claim %q", k)
				}
			}
		})
	}
}

// verifyGoJose checks token against the issuer's JWKS with go-jose and
// returns its claims.
func verifyGoJose(t *testing.T, hc *http.Client, iss, token, alg, aud string) map[string]any {
	t.Helper()
	return verifyGoJoseAt(t, hc, iss, iss, token, alg, aud)
}

// verifyGoJoseAt is verifyGoJose with the JWKS fetched from base, for when
// the test reaches the issuer at another address than its issuer URL.
func verifyGoJoseAt(t *testing.T, hc *http.Client, base, iss, token, alg, aud string) map[string]any {
	t.Helper()
	res, err := hc.Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var jwks jose.JSONWebKeySet
	if err := json.NewDecoder(res.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		t.Fatalf("go-jose parse: %v", err)
	}
	if len(tok.Headers) != 1 || tok.Headers[0].KeyID == "" {
		t.Fatalf("headers = %+v", tok.Headers)
	}
	keys := jwks.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		t.Fatalf("kid %s: %d keys in JWKS", tok.Headers[0].KeyID, len(keys))
	}
	var std jwt.Claims
	var all map[string]any
	if err := tok.Claims(keys[0].Key, &std, &all); err != nil {
		t.Fatalf("go-jose rejects %s token: %v", alg, err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: iss, AnyAudience: jwt.Audience{aud}, Time: time.Now()}, 0); err != nil {
		t.Fatalf("go-jose claims: %v", err)
	}
	return all
}

func TestSandboxErrors(t *testing.T) {
	sb := startSandbox(t)
	hc := &http.Client{Timeout: 10 * time.Second}
	person, tagged := sb.Gateway.URL(), sb.TaggedGW.URL()

	post := func(base, ctype, body string) (int, tokenAnswer) {
		t.Helper()
		res, err := hc.Post(base+"/token", ctype, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var ta tokenAnswer
		b, _ := io.ReadAll(res.Body)
		if err := json.Unmarshal(b, &ta); err != nil {
			t.Fatalf("%d: body is not JSON: %q", res.StatusCode, b)
		}
		return res.StatusCode, ta
	}
	form := "application/x-www-form-urlencoded"
	tests := []struct {
		name       string
		base       string
		ctype      string
		body       string
		wantStatus int
		wantError  string
	}{
		{"unknown audience", person, form, "audience=nope", 400, "invalid_target"},
		{"tagged device on people-only", tagged, form, "audience=people-only", 403, "access_denied"},
		{"person on ci-only", person, form, "audience=ci-only", 403, "access_denied"},
		{"no audience", person, form, "grant_type=client_credentials", 400, "invalid_request"},
		{"duplicate audience", person, form, "audience=a&audience=b", 400, "invalid_request"},
		{"audience and resource differ", person, form, "audience=https://es256.example&resource=people-only", 400, "invalid_request"},
		{"bad grant type", person, form, "grant_type=password&audience=people-only", 400, "unsupported_grant_type"},
		{"json body", person, "application/json", `{"audience":"people-only"}`, 400, "invalid_request"},
		{"malformed form", person, form, "audience=%zz", 400, "invalid_request"},
		{"bad ttl", person, form, "audience=people-only&ttl=soon", 400, "invalid_request"},
		{"ttl too short", person, form, "audience=people-only&ttl=1", 400, "invalid_request"},
		{"scope not offered", person, form, "audience=https://eddsa.example&scope=admin", 400, "invalid_scope"},
		{"oversize body", person, form, "audience=people-only&pad=" + strings.Repeat("x", 64<<10), 413, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, ta := post(tt.base, tt.ctype, tt.body)
			if status != tt.wantStatus || ta.Error != tt.wantError || ta.ErrorDescription == "" || ta.AccessToken != "" {
				t.Errorf("got %d %+v; want %d %s with a description and no token", status, ta, tt.wantStatus, tt.wantError)
			}
		})
	}

	t.Run("ttl clamped and expires_in tells the truth", func(t *testing.T) {
		status, ta, _ := postToken(t, hc, person, url.Values{"audience": {"https://rs256.example"}, "ttl": {"86400"}})
		if status != 200 || ta.ExpiresIn != 3600 {
			t.Fatalf("got %d expires_in=%d, want 200 and 3600 (max_ttl 1h)", status, ta.ExpiresIn)
		}
		status, ta, _ = postToken(t, hc, person, url.Values{"audience": {"https://rs256.example"}})
		if status != 200 || ta.ExpiresIn != 600 {
			t.Fatalf("default ttl: got %d expires_in=%d, want 600", status, ta.ExpiresIn)
		}
	})
	t.Run("scope granted", func(t *testing.T) {
		status, ta, _ := postToken(t, hc, person, url.Values{"audience": {"https://eddsa.example"}, "scope": {"read write"}})
		if status != 200 || ta.Scope != "read write" {
			t.Fatalf("got %d %+v", status, ta)
		}
	})
	t.Run("identity headers are ignored", func(t *testing.T) {
		req, _ := http.NewRequest("POST", tagged+"/token", strings.NewReader("audience=people-only"))
		req.Header.Set("Content-Type", form)
		req.Header.Set("X-Forwarded-For", "100.64.0.2")
		req.Header.Set("Tailscale-User-Login", "user-1@fake-control.example.net")
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 403 {
			t.Errorf("tagged device claiming to be a person via headers: %d, want 403", res.StatusCode)
		}
	})
	t.Run("GET /token", func(t *testing.T) {
		res, err := hc.Get(person + "/token?audience=people-only")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 405 {
			t.Errorf("GET /token = %d, want 405", res.StatusCode)
		}
	})
}

func TestSandboxJWKSCaching(t *testing.T) {
	sb := startSandbox(t)
	hc := &http.Client{Timeout: 10 * time.Second}
	res, err := hc.Get(sb.Issuer() + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	etag := res.Header.Get("ETag")
	if etag == "" || !strings.Contains(res.Header.Get("Cache-Control"), "max-age=") {
		t.Fatalf("headers = %v", res.Header)
	}
	for _, private := range []string{`"d"`, `"p"`, `"q"`, `"dp"`, `"dq"`, `"qi"`} {
		if strings.Contains(string(body), private) {
			t.Fatalf("JWKS contains private member %s: %s", private, body)
		}
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	json.Unmarshal(body, &set)
	algs := map[string]int{}
	for _, k := range set.Keys {
		if k["use"] != "sig" || k["kid"] == "" {
			t.Errorf("key = %v", k)
		}
		algs[k["alg"].(string)]++
	}
	for _, a := range []string{"ES256", "RS256", "EdDSA"} {
		if algs[a] != 2 { // active + published next
			t.Errorf("%s: %d keys published, want 2 (active and next)", a, algs[a])
		}
	}
	req, _ := http.NewRequest("GET", sb.Issuer()+"/.well-known/jwks.json", nil)
	req.Header.Set("If-None-Match", etag)
	res, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", res.StatusCode)
	}
	for _, p := range []string{"/.well-known/oauth-authorization-server", "/healthz", "/readyz"} {
		res, err := hc.Get(sb.Issuer() + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("GET %s = %d", p, res.StatusCode)
		}
	}
}
