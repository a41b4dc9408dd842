package oidc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/session"
)

// Grant types the provider serves at the token endpoint.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
)

// Handles reports whether the provider serves the token request's grant
// type; the token endpoint serves client_credentials itself.
func Handles(grantType string) bool {
	return grantType == GrantAuthorizationCode || grantType == GrantRefreshToken
}

// ServeToken answers a token request of grant type authorization_code or
// refresh_token, whose form the token endpoint has read.
func (p *Provider) ServeToken(w http.ResponseWriter, r *http.Request, form url.Values) {
	c, ref, challenge := p.authenticateClient(r, form)
	if ref == nil {
		var out tokens
		switch form.Get("grant_type") {
		case GrantAuthorizationCode:
			out, ref = p.exchangeCode(r.Context(), c, form)
		case GrantRefreshToken:
			out, ref = p.refresh(r.Context(), c, form)
		}
		if ref == nil {
			writeTokens(w, out)
			return
		}
	}
	oauthhttp.Refuse(w, ref, challenge)
}

func writeTokens(w http.ResponseWriter, out tokens) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	json.NewEncoder(w).Encode(out)
}

// pkceVerifier is an RFC 7636 §4.1 code verifier.
var pkceVerifier = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)

// errCodeMismatch refuses a code presented by another client, for another
// redirect URI or without its PKCE verifier; the code stays unredeemed.
type errCodeMismatch struct{ desc string }

func (e errCodeMismatch) Error() string { return e.desc }

// exchangeCode redeems an authorization code (RFC 6749 §4.1.3, RFC 7636
// §4.6). A code redeemed a second time is refused and what the first
// redemption issued is revoked (RFC 6749 §4.1.2).
func (p *Provider) exchangeCode(ctx context.Context, c *clients.Client, form url.Values) (tokens, *issue.Refusal) {
	code, redirect, verifier := form.Get("code"), form.Get("redirect_uri"), form.Get("code_verifier")
	if code == "" {
		return tokens{}, issue.InvalidRequest("code is required")
	}
	if verifier != "" && !pkceVerifier.MatchString(verifier) {
		return tokens{}, issue.InvalidRequest("code_verifier must be 43 to 128 unreserved characters (RFC 7636)")
	}
	now := p.cfg.Now()
	handle := session.NewID()
	familyID, jti := session.FamilyID(handle), session.NewID()
	stored, err := p.cfg.Sessions.RedeemCode(ctx, session.CodeHash(code), now, familyID, jti, func(sc *session.Code) error {
		switch {
		case sc.Pending:
			return errCodeMismatch{"this is not an authorization code"}
		case sc.ClientID != c.ID:
			return errCodeMismatch{"the code was issued to another client"}
		case sc.RedirectURI != redirect:
			return errCodeMismatch{"redirect_uri differs from the authorization request's"}
		case sc.Challenge != "" && !pkceMatches(sc.Challenge, verifier):
			return errCodeMismatch{"code_verifier does not match the code challenge"}
		case sc.Challenge == "" && verifier != "":
			return errCodeMismatch{"code_verifier sent, but the authorization request had no code challenge"}
		}
		return nil
	})
	var mismatch errCodeMismatch
	switch {
	case errors.Is(err, session.ErrRedeemed):
		p.revokeFamily(ctx, stored.FamilyID, stored.AccessJTI, "its authorization code was redeemed twice")
		return tokens{}, invalidGrant("the code was already used; what it issued is revoked")
	case errors.Is(err, session.ErrNotFound):
		return tokens{}, invalidGrant("the code is unknown or expired")
	case errors.As(err, &mismatch):
		return tokens{}, invalidGrant(mismatch.desc)
	case err != nil:
		p.cfg.Logf("oidc: redeeming a code: %v", err)
		return tokens{}, unavailable()
	}
	d, ref, _ := p.reauthenticate(ctx, stored.Subject, c, stored.Scopes, stored.AuthTime)
	if ref != nil {
		return tokens{}, ref
	}
	fam := &session.Family{
		ID: familyID, ClientID: c.ID, Scopes: stored.Scopes, Subject: stored.Subject, AuthTime: stored.AuthTime,
		Created: now, LastUsed: now, IdleTimeout: p.cfg.IdleTimeout, Expires: now.Add(p.cfg.Lifetime), AccessJTI: jti,
	}
	secret := session.NewSecret()
	offline := slices.Contains(stored.Scopes, clients.ScopeOfflineAccess)
	if offline {
		fam.Current = session.HashOf(secret)
	}
	// The session is durable before the answer that hands out its refresh
	// token is sent.
	if err := p.cfg.Sessions.PutFamily(ctx, fam); err != nil {
		p.cfg.Logf("oidc: storing a session: %v", err)
		return tokens{}, unavailable()
	}
	out, err := p.mint(&d, c, jti, familyID, stored.Nonce, stored.Scopes)
	if err != nil {
		p.cfg.Logf("oidc: signing tokens for %q: %v", c.ID, err)
		return tokens{}, &issue.Refusal{Status: http.StatusInternalServerError, Code: "server_error", Description: "could not sign the tokens", Reason: err.Error()}
	}
	if offline {
		out.RefreshToken = session.RefreshToken(handle, secret)
	}
	return out, nil
}

// pkceMatches reports whether verifier is the S256 preimage of challenge.
func pkceMatches(challenge, verifier string) bool {
	if verifier == "" {
		return false
	}
	sum := sha256.Sum256([]byte(verifier))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(want), []byte(challenge)) == 1
}

// refresh exchanges a refresh token for new tokens and a new refresh token
// (rotated on every use, OAuth 2.1 §4.3.1). The old one stops working; if
// it comes back, the family is revoked (someone holds a copy). Before
// answering, tsidp asks tailscaled about the session's node and decides
// the login again: a node removed, logged out or moved to another person,
// or a rule or grant that no longer admits it, ends the session.
func (p *Provider) refresh(ctx context.Context, c *clients.Client, form url.Values) (tokens, *issue.Refusal) {
	handle, secret, err := session.ParseRefreshToken(form.Get("refresh_token"))
	if err != nil {
		return tokens{}, invalidGrant("the refresh token is malformed")
	}
	fam, err := p.cfg.Sessions.Family(ctx, session.FamilyID(handle))
	switch {
	case errors.Is(err, session.ErrNotFound):
		return tokens{}, invalidGrant("the refresh token is unknown")
	case err != nil:
		p.cfg.Logf("oidc: reading a session: %v", err)
		return tokens{}, unavailable()
	}
	now := p.cfg.Now()
	if why := fam.Ended(now); why != "" {
		return tokens{}, invalidGrant("the session has ended: " + why)
	}
	if fam.ClientID != c.ID {
		p.revokeFamily(ctx, fam.ID, fam.AccessJTI, "its refresh token was presented by another client")
		return tokens{}, invalidGrant("the refresh token was issued to another client")
	}
	if !fam.Current.Equal(session.HashOf(secret)) {
		p.revokeFamily(ctx, fam.ID, fam.AccessJTI, "a rotated refresh token was used again")
		return tokens{}, invalidGrant("the refresh token was already used; the session is revoked")
	}
	scopes := fam.Scopes
	if s := form.Get("scope"); s != "" {
		scopes = strings.Fields(s)
		for _, sc := range scopes {
			if !slices.Contains(fam.Scopes, sc) {
				return tokens{}, &issue.Refusal{Status: http.StatusBadRequest, Code: "invalid_scope",
					Description: "a refresh may only narrow the scopes of the login, not add " + sc}
			}
		}
	}
	d, ref, revoke := p.reauthenticate(ctx, fam.Subject, c, scopes, fam.AuthTime)
	if ref != nil {
		if revoke {
			p.revokeFamily(ctx, fam.ID, fam.AccessJTI, ref.Description)
		}
		return tokens{}, ref
	}
	next := *fam
	newSecret, jti := session.NewSecret(), session.NewID()
	next.Current, next.Generation, next.LastUsed, next.AccessJTI = session.HashOf(newSecret), fam.Generation+1, now, jti
	switch err := p.cfg.Sessions.UpdateFamily(ctx, &next, fam.Generation); {
	case errors.Is(err, session.ErrConflict):
		// Another refresh with the same token won the race: one of the
		// two holders is not the client.
		p.revokeFamily(ctx, fam.ID, fam.AccessJTI, "its refresh token was used twice at once")
		return tokens{}, invalidGrant("the refresh token was already used; the session is revoked")
	case err != nil:
		p.cfg.Logf("oidc: storing a refresh: %v", err)
		return tokens{}, unavailable()
	}
	out, err := p.mint(&d, c, jti, fam.ID, "", scopes)
	if err != nil {
		p.cfg.Logf("oidc: signing tokens for %q: %v", c.ID, err)
		return tokens{}, &issue.Refusal{Status: http.StatusInternalServerError, Code: "server_error", Description: "could not sign the tokens", Reason: err.Error()}
	}
	out.RefreshToken = session.RefreshToken(handle, newSecret)
	return out, nil
}

// revokeFamily ends a session and revokes its newest access token, so
// that userinfo refuses it at once. It retries on a concurrent change; a
// session already gone needs nothing.
func (p *Provider) revokeFamily(ctx context.Context, familyID, accessJTI, why string) {
	if accessJTI != "" {
		if err := p.cfg.Sessions.RevokeAccess(ctx, accessJTI, p.cfg.Now().Add(p.cfg.Lifetime)); err != nil {
			p.cfg.Logf("oidc: revoking access token %s: %v", accessJTI, err)
		}
	}
	if familyID == "" {
		return
	}
	for range 5 {
		f, err := p.cfg.Sessions.Family(ctx, familyID)
		if errors.Is(err, session.ErrNotFound) {
			return
		}
		if err != nil {
			p.cfg.Logf("oidc: revoking session %s: %v", familyID, err)
			return
		}
		if f.Revoked != "" {
			return
		}
		if f.AccessJTI != "" && f.AccessJTI != accessJTI {
			p.cfg.Sessions.RevokeAccess(ctx, f.AccessJTI, p.cfg.Now().Add(p.cfg.Lifetime))
		}
		next := *f
		next.Revoked, next.Generation = why, f.Generation+1
		err = p.cfg.Sessions.UpdateFamily(ctx, &next, f.Generation)
		if err == nil {
			p.cfg.Logf("oidc: session %s of %s for client %q revoked: %s", familyID, f.Subject.Subject, f.ClientID, why)
			return
		}
		if !errors.Is(err, session.ErrConflict) {
			p.cfg.Logf("oidc: revoking session %s: %v", familyID, err)
			return
		}
	}
	p.cfg.Logf("oidc: revoking session %s: gave up after repeated concurrent changes", familyID)
}

func unavailable() *issue.Refusal {
	return &issue.Refusal{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable",
		Description: "tsidp could not record the session; try again shortly"}
}
