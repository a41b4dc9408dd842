package issue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/grants"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/keys"
)

const capName = "example.com/cap/tsidp"

var (
	alice = &identity.Identity{Subject: "user:1", UserID: "1", LoginName: "alice@example.com", DisplayName: "Alice",
		NodeName: "laptop.tail1.ts.net", NodeID: "nL", Tailnet: "tail1.ts.net"}
	bob = &identity.Identity{Subject: "user:2", UserID: "2", LoginName: "bob@other.example",
		NodeName: "pc.tail1.ts.net", NodeID: "nB", Tailnet: "tail1.ts.net"}
	ci = &identity.Identity{Subject: "node:nCI", NodeName: "ci-1.tail1.ts.net", NodeID: "nCI", Tailnet: "tail1.ts.net",
		Tagged: true, Tags: []string{"tag:ci"}}
)

// withGrants returns a copy of id whose tailnet grants hold rules.
func withGrants(id *identity.Identity, rules ...string) *identity.Identity {
	c := *id
	var raw []tailcfg.RawMessage
	for _, r := range rules {
		raw = append(raw, tailcfg.RawMessage(r))
	}
	c.Caps = tailcfg.PeerCapMap{capName: raw}
	return &c
}

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func testRegistry(t testing.TB) *audience.Registry {
	t.Helper()
	reg, err := audience.NewRegistry([]audience.Config{
		{Name: "api", Allow: []string{"*@example.com", "tag:ci"}, Scopes: []string{"read", "write"}},
		{Name: "eng", Allow: []string{"group:eng"}},
		{Name: "rsa", Allow: []string{"*"}, Algorithm: "RS256", TTL: 15 * time.Minute, MaxTTL: time.Hour},
		{Name: "granted-only", Allow: []string{"user:nobody@example.com"}},
		{Name: "rs", Allow: []string{"*"}, TokenProfile: "rfc9068"},
	}, audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func newCore(t testing.TB, enrichers ...claims.Enricher) *Core {
	t.Helper()
	c, err := New(Config{Issuer: "https://idp.example", Audiences: testRegistry(t), Enrichers: enrichers,
		ClockSkew: 2 * time.Minute, Now: func() time.Time { return t0 }, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Enrichers standing in for plugins: the decision only sees their
// answers, and real plugins are tested over go-plugin in pkg/claims/plugin
// and end to end in integration/.
type (
	denyEnricher    struct{ reason string }
	failingEnricher struct{}
	claimsEnricher  struct {
		name   string
		claims []claims.Claim
		maxTTL time.Duration
		// audiences it claims to open: only AudienceGranters may.
		audiences []string
		calls     *atomic.Int64
	}
)

func (denyEnricher) Name() string { return "allowlist" }
func (d denyEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	return &claims.Result{Deny: true, Reason: d.reason}, nil
}
func (failingEnricher) Name() string { return "ldap" }
func (failingEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	return nil, errors.New("connection refused")
}
func (e claimsEnricher) Name() string { return e.name }
func (e claimsEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	if e.calls != nil {
		e.calls.Add(1)
	}
	return &claims.Result{Claims: e.claims, MaxTTL: e.maxTTL, Audiences: e.audiences}, nil
}

func groups(js string) []claims.Claim {
	return []claims.Claim{{Name: "groups", Value: json.RawMessage(js)}}
}

// TestRefusals has one row per reason the core refuses a token: each
// comes with its OAuth code, HTTP status, what the caller is told and a
// reason naming what decided.
func TestRefusals(t *testing.T) {
	huge := []claims.Claim{}
	for i := 0; i < 5; i++ {
		huge = append(huge, claims.Claim{Name: fmt.Sprintf("big%d", i), Value: json.RawMessage(`"` + strings.Repeat("x", 7000) + `"`)})
	}
	tests := []struct {
		name      string
		id        *identity.Identity
		req       Request
		enrichers []claims.Enricher
		status    int
		code      string
		desc      string // substring of Description
		reason    string // substring of Reason
	}{
		{"unknown audience", alice, Request{Audience: "nope"}, nil,
			400, "invalid_target", `audience "nope" is not configured`, `audience "nope" is not configured`},
		{"scope not offered", alice, Request{Audience: "api", Scopes: []string{"read", "admin"}}, nil,
			400, "invalid_scope", `scope "admin" is not available for audience "api"`, `scope "admin"`},
		{"no allow rule matches", bob, Request{Audience: "api"}, nil,
			403, "access_denied", `bob@other.example may not get tokens for audience "api"`,
			`no allow rule of audience "api" matches ("*@example.com", "tag:ci") and no grant opens it`},
		{"tagged device not in the rules", withTags(ci, "tag:web"), Request{Audience: "api"}, nil,
			403, "access_denied", `tagged device ci-1.tail1.ts.net may not get tokens for audience "api"`, `no allow rule of audience "api"`},
		{"group rule without the group", alice, Request{Audience: "eng"},
			[]claims.Enricher{claimsEnricher{name: "directory", claims: groups(`["ops"]`)}},
			403, "access_denied", `may not get tokens for audience "eng"`, `("group:eng")`},
		{"a plugin cannot open an audience", bob, Request{Audience: "api"},
			[]claims.Enricher{claimsEnricher{name: "directory", audiences: []string{"api"}}},
			403, "access_denied", `may not get tokens for audience "api"`, "no grant opens it"},
		{"grant for another audience", withGrants(bob, `{"audiences":["rsa"]}`), Request{Audience: "granted-only"},
			[]claims.Enricher{grants.New(capName, nil)},
			403, "access_denied", `may not get tokens for audience "granted-only"`, "no grant opens it"},
		{"plugin denies", alice, Request{Audience: "api"}, []claims.Enricher{denyEnricher{"not on the list"}},
			403, "access_denied", "not on the list", "refused by allowlist: not on the list"},
		{"plugin denies without a reason", alice, Request{Audience: "api"}, []claims.Enricher{denyEnricher{}},
			403, "access_denied", "refused by allowlist", "refused by allowlist"},
		{"plugin unavailable", alice, Request{Audience: "api"}, []claims.Enricher{failingEnricher{}},
			503, "temporarily_unavailable", `claims source "ldap" is unavailable`, `claims source "ldap" failed: connection refused`},
		{"lifetime capped below the minimum", alice, Request{Audience: "api"},
			[]claims.Enricher{claimsEnricher{name: "capper", maxTTL: 9 * time.Second}},
			403, "access_denied", "the token lifetime was capped below the minimum of 10s by capper", "capper capped the lifetime at 9s"},
		{"grant caps below the minimum: the rule is ignored", withGrants(bob, `{"audiences":["api"],"max_ttl":"5s"}`), Request{Audience: "api"},
			[]claims.Enricher{grants.New(capName, nil)},
			403, "access_denied", "may not get tokens", "no grant opens it"},
		{"ttl below the minimum", alice, Request{Audience: "api", TTL: 5 * time.Second}, nil,
			400, "invalid_request", "ttl must be at least 10s", "ttl must be at least 10s"},
		{"claims too large", alice, Request{Audience: "api"}, []claims.Enricher{claimsEnricher{name: "big", claims: huge}},
			500, "server_error", "claims for this caller are too large", "extra claims for user:1 total"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, r := newCore(t, tt.enrichers...).Decide(context.Background(), tt.id, tt.req)
			if r == nil {
				t.Fatalf("Decide = token %+v; want a refusal", d.Token)
			}
			if r.Status != tt.status || r.Code != tt.code || !strings.Contains(r.Description, tt.desc) || !strings.Contains(r.Reason, tt.reason) {
				t.Errorf("refusal = %d %s %q (reason %q);\nwant %d %s %q (reason %q)", r.Status, r.Code, r.Description, r.Reason,
					tt.status, tt.code, tt.desc, tt.reason)
			}
			if d.Token.Subject != "" || d.Algorithm != "" {
				t.Errorf("a refusal came with a decision: %+v", d)
			}
		})
	}
}

func withTags(id *identity.Identity, tags ...string) *identity.Identity {
	c := *id
	c.Tags = tags
	return &c
}

// TestDecisions: what a granted token holds, and the reason that admitted
// the caller.
func TestDecisions(t *testing.T) {
	tests := []struct {
		name      string
		id        *identity.Identity
		req       Request
		enrichers []claims.Enricher
		reason    string
		alg       string
		ttl       time.Duration
		scope     string
		extra     string // JSON of the extra claims
	}{
		{"allow rule", alice, Request{Audience: "api"}, nil, `allow rule "*@example.com"`, "ES256", time.Hour, "", "null"},
		{"tagged device by tag", ci, Request{Audience: "api", Scopes: []string{"read", "write"}}, nil, `allow rule "tag:ci"`, "ES256", time.Hour, "read write", "null"},
		{"audience algorithm and ttl", bob, Request{Audience: "rsa"}, nil, `allow rule "*"`, "RS256", 15 * time.Minute, "", "null"},
		{"requested ttl clamped to max_ttl", bob, Request{Audience: "rsa", TTL: 24 * time.Hour}, nil, `allow rule "*"`, "RS256", time.Hour, "", "null"},
		{"group from a plugin", alice, Request{Audience: "eng"},
			[]claims.Enricher{claimsEnricher{name: "directory", claims: groups(`["eng"]`), maxTTL: 5 * time.Minute}},
			`allow rule "group:eng"`, "ES256", 5 * time.Minute, "", `[{"Name":"groups","Value":["eng"]}]`},
		{"grant opens an audience", withGrants(bob, `{"audiences":["granted-only"],"claims":{"team":"infra"},"max_ttl":"30m"}`), Request{Audience: "granted-only"},
			[]claims.Enricher{grants.New(capName, nil)},
			"granted by tailnet-grants", "ES256", 30 * time.Minute, "", `[{"Name":"team","Value":"infra"}]`},
		{"reserved claims from plugins are dropped", alice, Request{Audience: "api"},
			[]claims.Enricher{claimsEnricher{name: "evil", claims: []claims.Claim{{Name: "sub", Value: json.RawMessage(`"user:0"`)}, {Name: "dept", Value: json.RawMessage(`"x"`)}}}},
			`allow rule "*@example.com"`, "ES256", time.Hour, "", `[{"Name":"dept","Value":"x"}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, r := newCore(t, tt.enrichers...).Decide(context.Background(), tt.id, tt.req)
			if r != nil {
				t.Fatalf("Decide refused: %d %s %q (%s)", r.Status, r.Code, r.Description, r.Reason)
			}
			tok := d.Token
			extra, _ := json.Marshal(tok.Extra)
			if d.Reason != tt.reason || string(d.Algorithm) != tt.alg || tok.Expiry.Sub(tok.IssuedAt) != tt.ttl ||
				tok.Scope != tt.scope || string(extra) != tt.extra {
				t.Errorf("decision: reason %q alg %s ttl %v scope %q extra %s;\nwant %q %s %v %q %s",
					d.Reason, d.Algorithm, tok.Expiry.Sub(tok.IssuedAt), tok.Scope, extra, tt.reason, tt.alg, tt.ttl, tt.scope, tt.extra)
			}
			if tok.Issuer != "https://idp.example" || tok.Subject != tt.id.Subject || tok.Audience != tt.req.Audience ||
				tok.Identity != tt.id || len(tok.ID) != 22 {
				t.Errorf("token = %+v", tok)
			}
		})
	}
}

// TestNotBeforeIsBackdated: verifiers whose clock runs behind tsidp's by
// less than the clock skew accept a fresh token; iat stays the true issue
// time.
func TestNotBeforeIsBackdated(t *testing.T) {
	d, r := newCore(t).Decide(context.Background(), alice, Request{Audience: "api"})
	if r != nil {
		t.Fatal(r)
	}
	if !d.Token.IssuedAt.Equal(t0) || !d.Token.NotBefore.Equal(t0.Add(-2*time.Minute)) {
		t.Errorf("iat %v nbf %v; want iat = now (%v), nbf = now - clock skew", d.Token.IssuedAt, d.Token.NotBefore, t0)
	}
}

// TestRefusedBeforePlugins: a caller no allow rule admits, for an audience
// whose rules do not use groups, is refused without asking plugins (they
// could not change the answer), so a plugin neither sees nor looks up such
// callers, and one that is down does not turn the 403 into a 503. Tailnet
// grants are still asked, since they can open the audience.
func TestRefusedBeforePlugins(t *testing.T) {
	g := grants.New(capName, t.Logf)
	var calls atomic.Int64
	dir := claimsEnricher{name: "directory", claims: groups(`["ops"]`), calls: &calls}
	ctx := context.Background()

	if _, r := newCore(t, g, dir).Decide(ctx, bob, Request{Audience: "api"}); r == nil || r.Status != 403 || calls.Load() != 0 {
		t.Errorf("refused caller: %v, plugin asked %d times; want 403 without asking it", r, calls.Load())
	}
	if _, r := newCore(t, g, failingEnricher{}).Decide(ctx, bob, Request{Audience: "api"}); r == nil || r.Status != 403 {
		t.Errorf("refused caller with a plugin down: %v; want 403, not 503", r)
	}
	// A grant opens it: then plugins are asked, and their claims arrive.
	d, r := newCore(t, g, dir).Decide(ctx, withGrants(bob, `{"audiences":["api"]}`), Request{Audience: "api"})
	if r != nil || calls.Load() != 1 || claims.Strings(d.Token.Extra, "groups") == nil {
		t.Fatalf("granted caller: %v, plugin asked %d times, extra %v", r, calls.Load(), d.Token.Extra)
	}
	// Rules that use groups need the plugins' answer: they are asked.
	calls.Store(0)
	dir.claims = groups(`["eng"]`)
	if _, r := newCore(t, g, dir).Decide(ctx, bob, Request{Audience: "eng"}); r != nil || calls.Load() != 1 {
		t.Errorf("group rule: %v, plugin asked %d times", r, calls.Load())
	}
}

func TestIdentityRefusal(t *testing.T) {
	tests := []struct {
		err    error
		status int
		code   string
		desc   string
	}{
		{fmt.Errorf("x: %w", identity.ErrUnknownPeer), 401, "invalid_client", "caller is not a node of this tailnet"},
		{&identity.DeniedError{Reason: "caller's node is shared in from another tailnet"}, 403, "access_denied", "caller's node is shared in from another tailnet"},
		{fmt.Errorf("dial /run/tailscale.sock: %w", identity.ErrUnavailable), 503, "temporarily_unavailable", "tailnet identity is unavailable; try again shortly"},
	}
	for _, tt := range tests {
		r := IdentityRefusal(tt.err)
		if r.Status != tt.status || r.Code != tt.code || r.Description != tt.desc {
			t.Errorf("IdentityRefusal(%v) = %d %s %q", tt.err, r.Status, r.Code, r.Description)
		}
		if strings.Contains(r.Description, "sock") {
			t.Errorf("the caller is told about internals: %q", r.Description)
		}
	}
}

func TestCheckIssuer(t *testing.T) {
	tests := []struct {
		issuer string
		err    string // "" for ok
	}{
		{"https://idp.example", ""},
		{"http://127.0.0.1:8080", ""},
		{"http://idp.example.com:8080", ""},
		{"", "must be an http or https URL"},
		{"idp.example", "must be an http or https URL"},
		{"ftp://idp.example", "must be an http or https URL"},
		{"https://", "has no host"},
		{"https://idp.example/", `has a path: tsidp serves at the root of its issuer URL; write it without a path or trailing slash, as "https://idp.example"`},
		{"https://idp.example/tsidp", "has a path"},
		{"https://idp.example?x=1", "query"},
		{"https://idp.example?", "query"},
		{"https://idp.example#f", "fragment"},
		{"https://u:p@idp.example", "user information"},
	}
	for _, tt := range tests {
		err := CheckIssuer(tt.issuer)
		if (err == nil) != (tt.err == "") || (err != nil && (!strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "issue: "))) {
			t.Errorf("CheckIssuer(%q) = %v, want %q", tt.issuer, err, tt.err)
		}
		if _, err := New(Config{Issuer: tt.issuer, Audiences: testRegistry(t)}); (err == nil) != (tt.err == "") {
			t.Errorf("New(issuer %q) = %v", tt.issuer, err)
		}
	}
}

// TestRefusalsAreLoggedRateLimited: refused callers are logged with the
// reason, and a caller hammering tsidp cannot flood the log.
func TestRefusalsAreLoggedRateLimited(t *testing.T) {
	var mu sync.Mutex
	var logs []string
	c, err := New(Config{Issuer: "https://idp.example", Audiences: testRegistry(t),
		Logf: func(f string, a ...any) { mu.Lock(); logs = append(logs, fmt.Sprintf(f, a...)); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		c.Decide(context.Background(), bob, Request{Audience: "api"})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logs) == 0 || !strings.Contains(logs[0], `issue: refused bob@other.example for "api": no allow rule of audience "api" matches`) {
		t.Fatalf("logs = %q", logs)
	}
	if len(logs) > 100 {
		t.Errorf("1000 refusals wrote %d log lines", len(logs))
	}
}

// TestIssuanceIsSummarised: issued tokens are counted and logged once per
// interval, never one line per token; the last counts are logged when
// summaries stop.
func TestIssuanceIsSummarised(t *testing.T) {
	var mu sync.Mutex
	var logs []string
	c, err := New(Config{Issuer: "https://idp.example", Audiences: testRegistry(t),
		Logf: func(f string, a ...any) { mu.Lock(); logs = append(logs, fmt.Sprintf(f, a...)); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		c.Decide(context.Background(), alice, Request{Audience: "api"})
	}
	for i := 0; i < 3; i++ {
		c.Decide(context.Background(), bob, Request{Audience: "rsa"})
	}
	c.Decide(context.Background(), alice, Request{Audience: "nope"})
	mu.Lock()
	if len(logs) != 0 {
		t.Errorf("issuing logged %d lines before the summary: %q", len(logs), logs)
	}
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.LogSummaries(ctx, time.Hour); close(done) }()
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(logs) != 1 || !strings.Contains(logs[0], `issued 503 tokens ("api" 500, "rsa" 3), refused 1 requests`) {
		t.Errorf("summary = %q", logs)
	}
}

// TestNoIdentityNoToken: a surface that passes no identity (a bug) gets a
// refusal, never a token.
func TestNoIdentityNoToken(t *testing.T) {
	for _, id := range []*identity.Identity{nil, {}} {
		if d, r := newCore(t).Decide(context.Background(), id, Request{Audience: "rsa"}); r == nil || r.Status != 401 {
			t.Errorf("Decide(%+v) = %+v, %v; want 401", id, d, r)
		}
	}
}

// TestDecideLogin: a login is the same decision as a token request, with
// the client's policy for the audience, and tagged devices refused unless
// the client allows them.
func TestDecideLogin(t *testing.T) {
	clientPolicy := func(t *testing.T, allow ...string) *audience.Audience {
		reg, err := audience.NewRegistry([]audience.Config{{Name: "grafana", Allow: allow, Scopes: []string{"openid", "profile", "email"}}},
			audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "RS256"})
		if err != nil {
			t.Fatal(err)
		}
		return reg.Audience("grafana")
	}
	g := grants.New(capName, nil)
	tests := []struct {
		name   string
		id     *identity.Identity
		req    LoginRequest
		status int    // 0: granted
		reason string // of the decision or the refusal
	}{
		{"allowed person", alice, LoginRequest{Client: clientPolicy(t, "*@example.com"), Scopes: []string{"openid", "email"}}, 0, `allow rule "*@example.com"`},
		{"refused person", bob, LoginRequest{Client: clientPolicy(t, "*@example.com")}, 403, `no allow rule of audience "grafana"`},
		{"tagged device refused by default", ci, LoginRequest{Client: clientPolicy(t, "*")}, 403, "does not allow tagged devices"},
		{"tagged device allowed by the client", ci, LoginRequest{Client: clientPolicy(t, "tag:ci"), TaggedDevices: true}, 0, `allow rule "tag:ci"`},
		{"a grant naming the client", withGrants(bob, `{"audiences":["grafana"]}`), LoginRequest{Client: clientPolicy(t, "user:nobody@example.com")}, 0, "granted by tailnet-grants"},
		{"scope the client does not offer", alice, LoginRequest{Client: clientPolicy(t, "*"), Scopes: []string{"openid", "groups"}}, 400, `scope "groups"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, r := newCore(t, g).DecideLogin(context.Background(), tt.id, tt.req)
			switch {
			case tt.status == 0 && r != nil:
				t.Fatalf("refused: %v", r)
			case tt.status == 0:
				if d.Reason != tt.reason || d.Token.Audience != "grafana" || d.Algorithm != "RS256" {
					t.Errorf("decision %+v", d)
				}
			case r == nil:
				t.Fatalf("granted: %+v", d)
			case r.Status != tt.status || !strings.Contains(r.Reason, tt.reason):
				t.Errorf("refusal %d %q, want %d %q", r.Status, r.Reason, tt.status, tt.reason)
			}
		})
	}
}

// TestRFC9068Profile: an audience may ask for RFC 9068 access tokens: typ
// at+jwt and a client_id naming the caller's node; others keep typ JWT.
func TestRFC9068Profile(t *testing.T) {
	d, r := newCore(t).Decide(context.Background(), alice, Request{Audience: "rs"})
	if r != nil || d.Type != keys.TypeAccessToken || d.Token.ClientID != "node:nL" {
		t.Errorf("rfc9068 audience: %+v, %v", d, r)
	}
	d, r = newCore(t).Decide(context.Background(), alice, Request{Audience: "api"})
	if r != nil || d.Type != keys.TypeJWT || d.Token.ClientID != "" {
		t.Errorf("plain audience: %+v, %v", d, r)
	}
	if _, err := audience.NewRegistry([]audience.Config{{Name: "x", Allow: []string{"*"}, TokenProfile: "oauth"}},
		audience.Defaults{TTL: time.Hour, MaxTTL: time.Hour, Algorithm: "ES256"}); err == nil || !strings.Contains(err.Error(), "token_profile") {
		t.Errorf("unknown profile: %v", err)
	}
}
