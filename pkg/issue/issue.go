// Package issue decides every token tsidp issues. Given who the caller is
// (an identity.Identity, resolved by the surface from its tailnet
// connection) and what it asks for, Decide returns the claims and signing
// algorithm of the token, or a Refusal that carries the OAuth error code,
// the HTTP status and a reason naming the rule, grant or plugin that
// decided.
//
// It knows nothing of HTTP. POST /token, the OpenID Provider, the
// authorization server and the web page all call it; they parse their own
// protocol, sign and answer, and never re-implement a step of the
// decision: identify → audience rules → grants and plugins → lifetime →
// claims.
package issue

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/keys"
)

// Config configures a Core.
type Config struct {
	// Issuer is the "iss" of every token.
	Issuer string
	// Audiences are the audiences tokens can be issued for.
	Audiences *audience.Registry
	// Enrichers add claims, in merge order (tailnet grants, then plugins).
	Enrichers []claims.Enricher
	// ClockSkew is how far verifiers' clocks may run behind tsidp's: nbf
	// is backdated by it, so a verifier whose clock lags still accepts a
	// fresh token. iat stays the true issue time.
	ClockSkew time.Duration
	// Logf receives refusals (rate limited) and failures of enrichers;
	// nil discards. Issued tokens are counted, not logged one by one
	// (see LogSummaries).
	Logf logger.Logf
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Core makes token decisions. It is safe for concurrent use.
type Core struct {
	cfg       Config
	refusalf  logger.Logf // rate limited
	granters  []claims.Enricher
	summaries *summary
}

// New validates cfg and returns a Core.
func New(cfg Config) (*Core, error) {
	if err := CheckIssuer(cfg.Issuer); err != nil {
		return nil, err
	}
	switch {
	case cfg.Audiences == nil:
		return nil, errors.New("issue: no audiences")
	case cfg.ClockSkew < 0:
		return nil, fmt.Errorf("issue: clock skew %v is negative", cfg.ClockSkew)
	}
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Core{
		cfg:       cfg,
		refusalf:  logger.RateLimitedFn(cfg.Logf, time.Minute, 30, 100),
		summaries: newSummary(cfg.Audiences),
	}
	for _, e := range cfg.Enrichers {
		if _, ok := e.(claims.AudienceGranter); ok {
			c.granters = append(c.granters, e)
		}
	}
	return c, nil
}

// Issuer returns the "iss" of the tokens c decides.
func (c *Core) Issuer() string { return c.cfg.Issuer }

// Audiences returns the audiences c issues tokens for.
func (c *Core) Audiences() *audience.Registry { return c.cfg.Audiences }

// Request is what a caller asks for.
type Request struct {
	// Audience is the token's "aud": an audience of the registry.
	Audience string
	// Scopes are the scope values asked for; each must be one the
	// audience offers.
	Scopes []string
	// TTL is the lifetime asked for; zero means the audience's default.
	TTL time.Duration
}

// Decision is a granted token, not yet signed.
type Decision struct {
	// Token is the claim set.
	Token claims.Token
	// Algorithm is the audience's signing algorithm, and Type the token's
	// "typ" (at+jwt for the RFC 9068 profile).
	Algorithm keys.Algorithm
	Type      keys.Type
	// Reason says what admitted the caller, e.g. `allow rule
	// "*@example.com"` or `granted by tailnet-grants`.
	Reason string
}

// Refusal is a refused request. It is an error.
type Refusal struct {
	// Status is the HTTP status a web surface answers with.
	Status int
	// Code is the RFC 6749 error code: invalid_target, invalid_scope,
	// access_denied, invalid_request, invalid_client,
	// temporarily_unavailable or server_error.
	Code string
	// Description is for the caller (error_description): it says what
	// was refused and why, never what tsidp knows of other callers or its
	// own internals.
	Description string
	// Reason is for operators (logs, the audit log, explanations): it
	// names the rule, grant or plugin that decided, and may say more
	// than Description.
	Reason string
}

func (r *Refusal) Error() string { return r.Code + ": " + r.Reason }

func refuse(status int, code, desc, reason string) *Refusal {
	if reason == "" {
		reason = desc
	}
	return &Refusal{Status: status, Code: code, Description: desc, Reason: reason}
}

// InvalidRequest is the refusal of a request that is malformed before any
// decision: surfaces use it for their own parse errors.
func InvalidRequest(desc string) *Refusal {
	return refuse(http.StatusBadRequest, "invalid_request", desc, "")
}

// IdentityRefusal is how every surface answers a caller whose identity
// could not be established (err from an identity.Source): 401 for a peer
// that is not a node of the tailnet, 403 for one the identity rules
// refuse, 503 when the backend cannot answer. It never says more than the
// caller needs: no internal addresses, no backends.
func IdentityRefusal(err error) *Refusal {
	var denied *identity.DeniedError
	switch {
	case errors.As(err, &denied):
		return refuse(http.StatusForbidden, "access_denied", denied.Reason, "identity rules: "+denied.Reason)
	case errors.Is(err, identity.ErrUnknownPeer):
		return refuse(http.StatusUnauthorized, "invalid_client", "caller is not a node of this tailnet", err.Error())
	default:
		return refuse(http.StatusServiceUnavailable, "temporarily_unavailable",
			"tailnet identity is unavailable; try again shortly", err.Error())
	}
}

// Decide decides whether id gets a token for req and returns its claims,
// or why not. Every doubt is a refusal: a plugin that cannot answer, a
// lifetime capped below the minimum, claims too large. Identity is asked
// of the identity rules before any audience is looked up, so that callers
// outside the tailnet learn nothing about which audiences exist; surfaces
// pass only identities their Source returned.
func (c *Core) Decide(ctx context.Context, id *identity.Identity, req Request) (Decision, *Refusal) {
	return c.record(id, req.Audience, func() (Decision, *Refusal) { return c.decide(ctx, id, req) })
}

// record runs a decision and counts it; refusals are logged, rate limited.
func (c *Core) record(id *identity.Identity, aud string, decide func() (Decision, *Refusal)) (Decision, *Refusal) {
	d, r := decide()
	if r != nil {
		c.summaries.refused.Add(1)
		if r.Status == http.StatusForbidden {
			c.refusalf("issue: refused %s for %q: %s", describe(id), aud, r.Reason)
		}
		return Decision{}, r
	}
	c.summaries.issued(d.Token.Audience)
	return d, nil
}

// LoginRequest is a login to a client of the OpenID Provider: the same
// decision as a token request, with the client's policy in place of an
// audience's.
type LoginRequest struct {
	// Client is the client's policy as an audience named by its client
	// ID: who may log in (allow rules, tailnet grants naming the client
	// ID), the lifetime and algorithm of its tokens, the scopes it may
	// ask for.
	Client *audience.Audience
	// TaggedDevices reports whether tagged devices may log in: a login
	// is a person's, unless the client says otherwise.
	TaggedDevices bool
	// Scopes are the scopes asked for.
	Scopes []string
	// TTL is the access token lifetime asked for; zero for the default.
	TTL time.Duration
}

// DecideLogin decides whether id may log in to a client, and with which
// claims; see Decide.
func (c *Core) DecideLogin(ctx context.Context, id *identity.Identity, req LoginRequest) (Decision, *Refusal) {
	name := ""
	if req.Client != nil {
		name = req.Client.Name
	}
	return c.record(id, name, func() (Decision, *Refusal) {
		if id != nil && id.Tagged && !req.TaggedDevices {
			return Decision{}, refuse(http.StatusForbidden, "access_denied",
				fmt.Sprintf("tagged device %s may not log in to %q: it is not a person, and the client does not allow tagged devices", id.NodeName, name),
				fmt.Sprintf("client %q does not allow tagged devices (allow_tagged_devices)", name))
		}
		return c.decideFor(ctx, id, req.Client, req.Scopes, req.TTL)
	})
}

func (c *Core) decide(ctx context.Context, id *identity.Identity, req Request) (Decision, *Refusal) {
	aud := c.cfg.Audiences.Audience(req.Audience)
	if aud == nil {
		return Decision{}, refuse(http.StatusBadRequest, "invalid_target",
			fmt.Sprintf("audience %q is not configured", req.Audience), "")
	}
	return c.decideFor(ctx, id, aud, req.Scopes, req.TTL)
}

// decideFor is the decision for an audience (or a client's policy): the
// one implementation every surface's request goes through.
func (c *Core) decideFor(ctx context.Context, id *identity.Identity, aud *audience.Audience, scopes []string, reqTTL time.Duration) (Decision, *Refusal) {
	if id == nil || id.Subject == "" {
		// A surface's bug, never a token: fail closed.
		return Decision{}, IdentityRefusal(fmt.Errorf("%w: no identity", identity.ErrUnknownPeer))
	}
	req := Request{Audience: aud.Name, Scopes: scopes, TTL: reqTTL}
	for _, sc := range req.Scopes {
		if !aud.ScopeAllowed(sc) {
			return Decision{}, refuse(http.StatusBadRequest, "invalid_scope",
				fmt.Sprintf("scope %q is not available for audience %q", sc, aud.Name), "")
		}
	}
	creq := &claims.Request{Identity: id, Audience: aud.Name, Scopes: req.Scopes}

	// Refuse before asking plugins when nothing they say could change the
	// answer: they would see (and look up) callers who get no token, and
	// a plugin that is down would turn this 403 into a 503.
	rule, admitted := aud.Match(id, nil)
	if !admitted && !aud.UsesGroups() && !c.mayBeGranted(ctx, creq) {
		return Decision{}, c.notAllowed(id, aud)
	}
	e, r := c.enrich(ctx, creq)
	if r != nil {
		return Decision{}, r
	}
	reason := ""
	switch {
	case admitted:
		reason = fmt.Sprintf("allow rule %q", rule)
	case e.grantedBy != "":
		reason = "granted by " + e.grantedBy
	default:
		if rule, ok := aud.Match(id, claims.Strings(e.extra, "groups")); ok {
			reason = fmt.Sprintf("allow rule %q", rule)
		} else {
			return Decision{}, c.notAllowed(id, aud)
		}
	}
	ttl, err := aud.TTLFor(req.TTL, e.limit)
	switch {
	case errors.Is(err, audience.ErrCappedBelowMin):
		// enrich refuses such caps first; this is the backstop.
		return Decision{}, refuse(http.StatusForbidden, "access_denied", err.Error(), "")
	case err != nil:
		return Decision{}, refuse(http.StatusBadRequest, "invalid_request", err.Error(), "")
	}
	now := c.cfg.Now()
	typ, clientID := keys.TypeJWT, ""
	if aud.Profile == audience.ProfileRFC9068 {
		// The caller's node is the OAuth client of a POST /token.
		typ, clientID = keys.TypeAccessToken, "node:"+id.NodeID
	}
	return Decision{
		Token: claims.Token{
			Issuer:    c.cfg.Issuer,
			Subject:   id.Subject,
			Audience:  aud.Name,
			IssuedAt:  now,
			NotBefore: now.Add(-c.cfg.ClockSkew),
			Expiry:    now.Add(ttl),
			ID:        newJTI(),
			Scope:     strings.Join(req.Scopes, " "),
			Identity:  id,
			Extra:     e.extra,
			ClientID:  clientID,
		},
		Algorithm: keys.Algorithm(aud.Algorithm),
		Type:      typ,
		Reason:    reason,
	}, nil
}

func (c *Core) notAllowed(id *identity.Identity, aud *audience.Audience) *Refusal {
	return refuse(http.StatusForbidden, "access_denied",
		fmt.Sprintf("%s may not get tokens for audience %q", describe(id), aud.Name),
		fmt.Sprintf("no allow rule of audience %q matches (%s) and no grant opens it", aud.Name, strings.Join(quoteAll(aud.Rules().Strings()), ", ")))
}

// mayBeGranted reports whether an AudienceGranter (tailnet grants) grants
// the audience. enrich asks them again, with the others, when it does;
// they answer from memory. A granter that fails grants nothing.
func (c *Core) mayBeGranted(ctx context.Context, req *claims.Request) bool {
	for _, e := range c.granters {
		if res, err := e.Enrich(ctx, req); err == nil && res != nil && !res.Deny && contains(res.Audiences, req.Audience) {
			return true
		}
	}
	return false
}

// enriched is what the enrichers said together.
type enriched struct {
	extra     []claims.Claim
	grantedBy string        // the first granter that granted the audience
	limit     time.Duration // the lowest lifetime cap, 0 for none
}

// enrich asks every enricher in order and merges their claims. Any
// enricher failure refuses the token: plugins apply their own on-error
// policy and only report an error when that policy is to deny.
func (c *Core) enrich(ctx context.Context, req *claims.Request) (enriched, *Refusal) {
	var e enriched
	for _, en := range c.cfg.Enrichers {
		res, err := en.Enrich(ctx, req)
		if err != nil {
			c.cfg.Logf("issue: enricher %s: %v", en.Name(), err)
			return enriched{}, refuse(http.StatusServiceUnavailable, "temporarily_unavailable",
				fmt.Sprintf("claims source %q is unavailable", en.Name()), fmt.Sprintf("claims source %q failed: %v", en.Name(), err))
		}
		if res == nil {
			continue
		}
		if res.Deny {
			desc := res.Reason
			if desc == "" {
				desc = "refused by " + en.Name()
			}
			return enriched{}, refuse(http.StatusForbidden, "access_denied", desc, fmt.Sprintf("refused by %s: %s", en.Name(), desc))
		}
		valid := res.Claims[:0:0]
		for _, cl := range res.Claims {
			if err := cl.Validate(nil); err != nil {
				c.cfg.Logf("issue: enricher %s: dropping claim: %v", en.Name(), err)
				continue
			}
			valid = append(valid, cl)
		}
		e.extra = claims.Merge(e.extra, valid)
		if _, ok := en.(claims.AudienceGranter); ok && e.grantedBy == "" && contains(res.Audiences, req.Audience) {
			e.grantedBy = en.Name()
		}
		if res.MaxTTL > 0 && res.MaxTTL < audience.MinTTL {
			// Fail closed: a token that expires as it is issued is no
			// token, and a longer one than the cap is not allowed.
			desc := fmt.Sprintf("the token lifetime was capped below the minimum of %v by %s", audience.MinTTL, en.Name())
			return enriched{}, refuse(http.StatusForbidden, "access_denied", desc,
				fmt.Sprintf("%s capped the lifetime at %v, below the minimum %v", en.Name(), res.MaxTTL, audience.MinTTL))
		}
		if res.MaxTTL > 0 && (e.limit == 0 || res.MaxTTL < e.limit) {
			e.limit = res.MaxTTL
		}
	}
	size := 0
	for _, cl := range e.extra {
		size += len(cl.Name) + len(cl.Value)
	}
	if size > claims.MaxExtraBytes {
		return enriched{}, refuse(http.StatusInternalServerError, "server_error", "claims for this caller are too large",
			fmt.Sprintf("extra claims for %s total %d bytes, over %d", req.Identity.Subject, size, claims.MaxExtraBytes))
	}
	return e, nil
}

// describe names the caller for people: the login, or the tagged device.
func describe(id *identity.Identity) string {
	if id == nil {
		return "an unidentified caller"
	}
	if id.Tagged {
		return "tagged device " + id.NodeName
	}
	return id.LoginName
}

func newJTI() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func quoteAll(xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprintf("%q", x)
	}
	return out
}

// CheckIssuer reports whether iss can be the issuer of tsidp's tokens: an
// http or https URL with a host and nothing after it. Discovery, JWKS and
// the endpoints are served at the root, and verifiers compare "iss" with
// the issuer they were configured with byte for byte, so the issuer is
// used exactly as written: a path (even a lone "/") would break one or the
// other.
func CheckIssuer(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("issue: issuer %q: %w", s, err)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("issue: issuer %q must be an http or https URL", s)
	case u.Host == "":
		return fmt.Errorf("issue: issuer %q has no host", s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Errorf("issue: issuer %q must not have a query or fragment", s)
	case u.User != nil:
		return fmt.Errorf("issue: issuer %q must not have user information", s)
	case u.Path != "" || u.RawPath != "":
		return fmt.Errorf("issue: issuer %q has a path: tsidp serves at the root of its issuer URL; write it without a path or trailing slash, as %q", s, u.Scheme+"://"+u.Host)
	}
	return nil
}
