package clients

import (
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/identity"
)

var defaults = Defaults{TTL: time.Hour, Algorithm: "ES256", Algorithms: []string{"ES256", "RS256", "EdDSA"}}

var secretHash = SecretHash("s3cret")

func boolp(b bool) *bool { return &b }

func TestCompile(t *testing.T) {
	base := func() Config {
		return Config{ID: "grafana", SecretSHA256: secretHash, RedirectURIs: []string{"https://grafana.example/login/generic_oauth"}, Allow: []string{"*@example.com"}}
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // "" for success
	}{
		{"ok", func(*Config) {}, ""},
		{"no id", func(c *Config) { c.ID = "" }, "id is required"},
		{"no auth", func(c *Config) { c.SecretSHA256 = "" }, "token_endpoint_auth_method is required"},
		{"short hash", func(c *Config) { c.SecretSHA256 = "abcd" }, "secret_sha256 must be 64 hex digits"},
		{"unknown method", func(c *Config) { c.AuthMethod = "private_key_jwt" }, `token_endpoint_auth_method "private_key_jwt"`},
		{"public with secret", func(c *Config) { c.AuthMethod = AuthNone }, "a public client (token_endpoint_auth_method none) has no secret_sha256"},
		{"public without pkce", func(c *Config) { c.AuthMethod, c.SecretSHA256, c.RequirePKCE = AuthNone, "", boolp(false) }, "a public client always uses PKCE"},
		{"confidential without pkce", func(c *Config) { c.RequirePKCE = boolp(false) }, ""},
		{"tailnet", func(c *Config) { c.SecretSHA256, c.TailnetIdentities = "", []string{"tag:grafana"} }, ""},
		{"tailnet bad rule", func(c *Config) { c.SecretSHA256, c.TailnetIdentities = "", []string{"grafana"} }, "tailnet_identities"},
		{"tailnet and secret", func(c *Config) { c.TailnetIdentities = []string{"tag:grafana"} }, "secret_sha256 goes with client_secret_basic or client_secret_post, not tailnet"},
		{"secret method and tailnet", func(c *Config) { c.AuthMethod, c.TailnetIdentities = AuthSecretPost, []string{"tag:grafana"} }, "tailnet_identities go with token_endpoint_auth_method tailnet"},
		{"tailnet without identities", func(c *Config) { c.AuthMethod, c.SecretSHA256 = AuthTailnet, "" }, "tailnet_identities is empty"},
		{"no redirect", func(c *Config) { c.RedirectURIs = nil }, "redirect_uris is empty"},
		{"http redirect", func(c *Config) { c.RedirectURIs = []string{"http://grafana.example/cb"} }, "plain http"},
		{"loopback http redirect", func(c *Config) { c.RedirectURIs = []string{"http://127.0.0.1:4180/oauth2/callback"} }, ""},
		{"fragment", func(c *Config) { c.RedirectURIs = []string{"https://a.example/cb#x"} }, "fragment"},
		{"relative", func(c *Config) { c.RedirectURIs = []string{"/cb"} }, "not an absolute URL"},
		{"custom scheme not native", func(c *Config) { c.RedirectURIs = []string{"com.example.app:/cb"} }, "only native apps"},
		{"custom scheme native", func(c *Config) { c.Native, c.RedirectURIs = true, []string{"com.example.app:/cb"} }, ""},
		{"custom scheme without a dot", func(c *Config) { c.Native, c.RedirectURIs = true, []string{"myapp:/cb"} }, "reverse domain name"},
		{"empty allow", func(c *Config) { c.Allow = nil }, "allow is empty"},
		{"bad allow", func(c *Config) { c.Allow = []string{"alice"} }, "allow rule"},
		{"bad id token alg", func(c *Config) { c.IDTokenAlg = "HS256" }, `id_token_signed_response_alg "HS256"`},
		{"bad scope", func(c *Config) { c.Scopes = []string{"openid", "admin"} }, `scopes: "admin"`},
		{"logout redirect", func(c *Config) { c.PostLogoutRedirectURIs = []string{"http://evil.example/"} }, "post_logout_redirect_uris"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			_, err := NewRegistry([]Config{c}, defaults, nil)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("NewRegistry = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	aud, err := audience.NewRegistry([]audience.Config{{Name: "api", Allow: []string{"*"}}}, audience.Defaults{TTL: time.Hour, MaxTTL: time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	c := Config{ID: "api", SecretSHA256: secretHash, RedirectURIs: []string{"https://a.example/cb"}, Allow: []string{"*"}}
	if _, err := NewRegistry([]Config{c}, defaults, aud); err == nil || !strings.Contains(err.Error(), "an audience has the same name") {
		t.Errorf("client named like an audience: %v", err)
	}
	c.ID = "app"
	if _, err := NewRegistry([]Config{c, c}, defaults, aud); err == nil || !strings.Contains(err.Error(), "configured twice") {
		t.Errorf("duplicate client: %v", err)
	}
	r, err := NewRegistry([]Config{c}, defaults, aud)
	if err != nil {
		t.Fatal(err)
	}
	cl := r.Client("app")
	if cl == nil || r.Client("nope") != nil || cl.Name != "app" || cl.IDTokenAlg != "RS256" || !cl.RequirePKCE || cl.AuthMethod != AuthSecretBasic {
		t.Fatalf("client %+v", cl)
	}
	if cl.Policy.Name != "app" || cl.Policy.TTL != time.Hour || cl.Policy.Algorithm != "ES256" || !cl.Policy.ScopeAllowed("offline_access") {
		t.Errorf("policy %+v", cl.Policy)
	}
}

func TestSecret(t *testing.T) {
	r, err := NewRegistry([]Config{{ID: "app", SecretSHA256: strings.ToUpper(secretHash), RedirectURIs: []string{"https://a.example/cb"}, Allow: []string{"*"}}}, defaults, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := r.Client("app")
	if !cl.CheckSecret("s3cret") || cl.CheckSecret("s3cret ") || cl.CheckSecret("") || cl.CheckSecret(secretHash) {
		t.Error("CheckSecret accepts the wrong secrets or refuses the right one")
	}
}

func TestTailnetAuthentication(t *testing.T) {
	r, err := NewRegistry([]Config{{ID: "grafana", TailnetIdentities: []string{"tag:grafana", "nodeid:nG2"},
		RedirectURIs: []string{"https://a.example/cb"}, Allow: []string{"*"}}}, defaults, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := r.Client("grafana")
	grafana := &identity.Identity{Subject: "node:nG", NodeID: "nG", Tagged: true, Tags: []string{"tag:grafana"}}
	other := &identity.Identity{Subject: "node:nW", NodeID: "nW", Tagged: true, Tags: []string{"tag:web"}}
	second := &identity.Identity{Subject: "node:nG2", NodeID: "nG2", Tagged: true, Tags: []string{"tag:web"}}
	if rule, ok := cl.TailnetAuthenticates(grafana); !ok || rule != "tag:grafana" {
		t.Errorf("grafana node: %q %v", rule, ok)
	}
	if _, ok := cl.TailnetAuthenticates(other); ok {
		t.Error("another node authenticates the client")
	}
	if _, ok := cl.TailnetAuthenticates(second); !ok {
		t.Error("nodeid rule does not authenticate")
	}
	if cl.CheckSecret("") {
		t.Error("a tailnet client accepts an empty secret")
	}
}

func TestRedirectAllowed(t *testing.T) {
	web := &Client{RedirectURIs: []string{"https://app.example/cb", "http://127.0.0.1:4180/oauth2/callback"}}
	native := &Client{Native: true, RedirectURIs: []string{"http://127.0.0.1/cb", "http://[::1]/cb", "com.example.app:/cb"}}
	tests := []struct {
		c    *Client
		uri  string
		want bool
	}{
		{web, "https://app.example/cb", true},
		{web, "https://app.example/cb/", false},
		{web, "https://app.example/cb?x=1", false},
		{web, "https://APP.example/cb", false},
		{web, "https://app.example/CB", false},
		{web, "http://127.0.0.1:4180/oauth2/callback", true},
		{web, "http://127.0.0.1:4181/oauth2/callback", false}, // ports vary only for native apps
		{native, "http://127.0.0.1:51234/cb", true},
		{native, "http://127.0.0.1/cb", true},
		{native, "http://[::1]:8123/cb", true},
		{native, "http://127.0.0.1:51234/other", false},
		{native, "http://localhost:51234/cb", false}, // RFC 8252 §8.3: literals only
		{native, "https://127.0.0.1:51234/cb", false},
		{native, "http://127.0.0.1:0/cb", false},
		{native, "http://127.0.0.1:99999/cb", false},
		{native, "http://user@127.0.0.1:5000/cb", false},
		{native, "com.example.app:/cb", true},
		{native, "com.example.app:/other", false},
	}
	for _, tt := range tests {
		if got := tt.c.RedirectAllowed(tt.uri); got != tt.want {
			t.Errorf("RedirectAllowed(%q) native=%v = %v, want %v", tt.uri, tt.c.Native, got, tt.want)
		}
	}
}
