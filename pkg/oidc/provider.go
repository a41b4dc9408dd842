// Package oidc is tsidp's OpenID Provider: the authorization code flow
// with PKCE for web and native apps, refresh tokens that follow the
// tailnet, userinfo and RP-initiated logout. One file per endpoint or
// grant.
//
// The browser is identified by WhoIs on its tailnet connection: there is
// no password, no login form, and no cookie tsidp would have to trust. A
// login is the same decision as POST /token (pkg/issue), made for a
// client; every code exchange and refresh asks tailscaled about the node
// again and makes the decision again, so a session ends when the tailnet
// says the person or device may no longer log in.
package oidc

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/session"
)

// Signer signs and verifies tokens; *keys.Manager implements it.
type Signer interface {
	SignAs(dst []byte, alg keys.Algorithm, typ keys.Type, payload []byte) ([]byte, string, error)
	Verify(token string) (*keys.Verified, error)
}

var _ Signer = (*keys.Manager)(nil)

// Config configures a Provider.
type Config struct {
	// Core decides logins; its issuer is the provider's.
	Core *issue.Core
	// Clients are the relying parties.
	Clients *clients.Registry
	// Sessions keeps codes and refresh families.
	Sessions session.Store
	// Signer signs tokens with the published keys.
	Signer Signer
	// Identify returns the identity of a request's caller, from its
	// tailnet connection (the server's per-connection WhoIs).
	Identify func(r *http.Request) (*identity.Identity, error)
	// Source asks tailscaled about a session's node again, by its
	// address, at every code exchange and refresh.
	Source identity.Source
	// Confirm asks every person to confirm every login (shared machines).
	Confirm bool
	// IdleTimeout ends a session unused this long; Lifetime ends it
	// regardless. Defaults 7 days and 30 days.
	IdleTimeout time.Duration
	Lifetime    time.Duration
	// Logf logs; nil discards.
	Logf logger.Logf
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Session defaults.
const (
	DefaultIdleTimeout = 7 * 24 * time.Hour
	DefaultLifetime    = 30 * 24 * time.Hour
	// CodeTTL is how long an authorization code may be redeemed.
	CodeTTL = 60 * time.Second
	// ConfirmTTL is how long a confirmation page stays valid.
	ConfirmTTL = 5 * time.Minute
)

// Provider serves the OpenID Provider's endpoints.
type Provider struct {
	cfg    Config
	issuer string
	pages  *pages
}

// New validates cfg and returns a Provider.
func New(cfg Config) (*Provider, error) {
	switch {
	case cfg.Core == nil:
		return nil, errors.New("oidc: no issuance core")
	case cfg.Sessions == nil:
		return nil, errors.New("oidc: no session store")
	case cfg.Signer == nil:
		return nil, errors.New("oidc: no signer")
	case cfg.Identify == nil || cfg.Source == nil:
		return nil, errors.New("oidc: no identity source")
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.IdleTimeout < 0 || cfg.Lifetime < 0 || cfg.IdleTimeout > cfg.Lifetime {
		return nil, fmt.Errorf("oidc: session idle timeout %v must be positive and at most the lifetime %v", cfg.IdleTimeout, cfg.Lifetime)
	}
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pg, err := newPages()
	if err != nil {
		return nil, err
	}
	return &Provider{cfg: cfg, issuer: cfg.Core.Issuer(), pages: pg}, nil
}

// subjectOf is what a code or session remembers of the person.
func subjectOf(id *identity.Identity) session.Subject {
	s := session.Subject{Subject: id.Subject, UserID: id.UserID, NodeID: id.NodeID}
	for _, p := range id.Addresses {
		if a := p.Addr(); a.Is4() || s.NodeAddr == "" {
			s.NodeAddr = a.String()
			if a.Is4() {
				break
			}
		}
	}
	return s
}

// reauthenticate asks tailscaled about subj's node again and decides the
// login again, as at /authorize: the node must still be on the tailnet,
// still the same node and the same person, and still allowed. revoke
// reports whether the session must end (the tailnet says no), as opposed
// to a passing failure (tailscaled or a plugin down).
func (p *Provider) reauthenticate(ctx context.Context, subj session.Subject, c *clients.Client, scopes []string, authTime time.Time) (d issue.Decision, ref *issue.Refusal, revoke bool) {
	addr, err := netip.ParseAddr(subj.NodeAddr)
	if err != nil {
		return d, invalidGrant("the session's node has no tailnet address"), true
	}
	id, err := p.cfg.Source.Identify(ctx, netip.AddrPortFrom(addr, 0))
	if err != nil {
		r := issue.IdentityRefusal(err)
		if r.Status == http.StatusServiceUnavailable {
			return d, r, false
		}
		return d, invalidGrant("the session's node is no longer a node of this tailnet, or is refused: " + r.Description), true
	}
	switch {
	case id.NodeID != subj.NodeID:
		return d, invalidGrant("the session's node is gone from the tailnet (its address belongs to another node now)"), true
	case id.Subject != subj.Subject:
		return d, invalidGrant("the session's node belongs to someone else now"), true
	}
	d, ref = p.cfg.Core.DecideLogin(ctx, id, issue.LoginRequest{Client: c.Policy, TaggedDevices: c.TaggedDevices, Scopes: scopes})
	if ref != nil {
		switch ref.Status {
		case http.StatusServiceUnavailable, http.StatusInternalServerError:
			return d, ref, false
		case http.StatusBadRequest:
			return d, ref, false
		}
		return d, invalidGrant("the login is no longer allowed: " + ref.Description), true
	}
	d.Token.ClientID = c.ID
	d.Token.AuthTime = authTime
	return d, nil, false
}

func invalidGrant(desc string) *issue.Refusal {
	return &issue.Refusal{Status: http.StatusBadRequest, Code: "invalid_grant", Description: desc, Reason: desc}
}

// tokens is what a code exchange or refresh answers with.
type tokens struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	IDToken      string `json:"id_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// mint signs the access token of d (RFC 9068: typ at+jwt, client_id,
// aud the client) and, for an openid login, its ID token.
func (p *Provider) mint(d *issue.Decision, c *clients.Client, jti, sid, nonce string, scopes []string) (tokens, error) {
	t := d.Token
	t.ID, t.SessionID, t.Scope = jti, sid, strings.Join(scopes, " ")
	payload := t.AppendJSON(nil)
	at, _, err := p.cfg.Signer.SignAs(nil, d.Algorithm, keys.TypeAccessToken, payload)
	if err != nil {
		return tokens{}, err
	}
	out := tokens{AccessToken: string(at), TokenType: "Bearer", ExpiresIn: int64(t.Expiry.Sub(t.IssuedAt) / time.Second), Scope: t.Scope}
	if !slices.Contains(scopes, clients.ScopeOpenID) {
		return out, nil
	}
	all := map[string]any{}
	if err := json.Unmarshal(payload, &all); err != nil {
		return tokens{}, err
	}
	id := release(all, scopes)
	alg := keys.Algorithm(c.IDTokenAlg)
	id["iss"], id["aud"], id["azp"] = t.Issuer, c.ID, c.ID
	id["iat"], id["exp"] = t.IssuedAt.Unix(), t.Expiry.Unix()
	id["auth_time"], id["sid"] = t.AuthTime.Unix(), sid
	id["at_hash"] = halfHash(alg, out.AccessToken)
	if nonce != "" {
		id["nonce"] = nonce
	}
	idPayload, err := json.Marshal(id)
	if err != nil {
		return tokens{}, err
	}
	it, _, err := p.cfg.Signer.SignAs(nil, alg, keys.TypeJWT, idPayload)
	if err != nil {
		return tokens{}, err
	}
	out.IDToken = string(it)
	return out, nil
}

// halfHash is OpenID Connect's at_hash: the left half of the hash of the
// token's ASCII, with the hash of the ID token's algorithm (SHA-512 for
// Ed25519), base64url.
func halfHash(alg keys.Algorithm, tok string) string {
	var h hash.Hash = sha256.New()
	if alg == keys.EdDSA {
		h = sha512.New()
	}
	h.Write([]byte(tok))
	sum := h.Sum(nil)
	return base64.RawURLEncoding.EncodeToString(sum[:len(sum)/2])
}

// Claims by scope. The access token carries every claim, as POST /token's
// tokens do; the ID token and userinfo release them by scope (see release):
// profile releases the identity claims (name, preferred_username, picture,
// login_name, user_id, tailnet, node, node_id, tagged, tags) and those of
// grants and plugins.
var (
	emailClaims = []string{"email"}
	// notReleased never leave the access token for userinfo or the ID
	// token body (the ID token sets its own registered claims).
	notReleased = []string{"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "client_id", "auth_time", "sid", "groups"}
)

// release returns the claims of all (a token's claim set) that scopes
// release: sub always; profile: the person's and node's identity claims and
// the claims of grants and plugins other than groups; email: email and
// email_verified; groups: groups.
func release(all map[string]any, scopes []string) map[string]any {
	out := map[string]any{"sub": all["sub"]}
	has := func(s string) bool { return slices.Contains(scopes, s) }
	if has(clients.ScopeProfile) {
		for k, v := range all {
			// The identity claims (profileClaims), and whatever grants
			// and plugins added.
			if !slices.Contains(notReleased, k) && !slices.Contains(emailClaims, k) {
				out[k] = v
			}
		}
	}
	if has(clients.ScopeEmail) {
		if e, ok := all["email"]; ok {
			// tsidp sets email only when the login is an email
			// address, which the tailnet's identity provider verified.
			out["email"], out["email_verified"] = e, true
		}
	}
	if has(clients.ScopeGroups) {
		if g, ok := all["groups"]; ok {
			out["groups"] = g
		}
	}
	return out
}

// Metadata returns what the provider adds to the discovery documents
// (OpenID Connect Discovery 1.0 and RFC 8414), endpoints under issuer.
func (p *Provider) Metadata() map[string]any {
	iss := p.issuer
	return map[string]any{
		"authorization_endpoint":                         iss + "/authorize",
		"userinfo_endpoint":                              iss + "/userinfo",
		"end_session_endpoint":                           iss + "/logout",
		"response_types_supported":                       []string{"code"},
		"response_modes_supported":                       []string{"query"},
		"grant_types_supported":                          []string{GrantAuthorizationCode, GrantRefreshToken},
		"code_challenge_methods_supported":               []string{"S256"},
		"authorization_response_iss_parameter_supported": true,
		"token_endpoint_auth_methods_supported":          []string{clients.AuthSecretBasic, clients.AuthSecretPost, clients.AuthNone},
		"scopes_supported":                               clients.StandardScopes(),
		"claims_supported": []string{"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "azp", "at_hash", "sid",
			"name", "preferred_username", "picture", "email", "email_verified", "groups",
			"login_name", "user_id", "tailnet", "node", "node_id", "tagged", "tags"},
		"prompt_values_supported":         []string{"none", "login", "consent", "select_account"},
		"request_parameter_supported":     false,
		"request_uri_parameter_supported": false,
		"claims_parameter_supported":      false,
		"subject_types_supported":         []string{"public"},
		"frontchannel_logout_supported":   false,
		"backchannel_logout_supported":    false,
	}
}
