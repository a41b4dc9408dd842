package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/session"
)

// accessClaims are the claims of an access token tsidp issued.
type accessClaims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	Expiry    int64  `json:"exp"`
	ID        string `json:"jti"`
	Scope     string `json:"scope"`
	ClientID  string `json:"client_id"`
	SessionID string `json:"sid"`
}

// checkAccessToken verifies a bearer token as one of tsidp's access
// tokens for a login (RFC 9068 typ, this issuer, unexpired, neither it nor
// its session revoked) and returns all its claims. The error is the
// RFC 6750 description to send.
func (p *Provider) checkAccessToken(ctx context.Context, tok string) (map[string]any, *accessClaims, error) {
	v, err := p.cfg.Signer.Verify(tok)
	if err != nil {
		return nil, nil, errors.New("the token is not one of this issuer's")
	}
	if v.Type != keys.TypeAccessToken.String() {
		return nil, nil, errors.New("the token is not an access token (typ at+jwt)")
	}
	var ac accessClaims
	var all map[string]any
	if json.Unmarshal(v.Payload, &ac) != nil || json.Unmarshal(v.Payload, &all) != nil {
		return nil, nil, errors.New("the token's claims are malformed")
	}
	switch {
	case ac.Issuer != p.issuer:
		return nil, nil, errors.New("the token is for another issuer")
	case p.cfg.Now().Unix() >= ac.Expiry:
		return nil, nil, errors.New("the token has expired")
	case ac.SessionID == "" || ac.ClientID == "":
		return nil, nil, errors.New("the token is not from a login")
	}
	revoked, err := p.cfg.Sessions.AccessRevoked(ctx, ac.ID)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errStore, err)
	}
	if revoked {
		return nil, nil, errors.New("the token was revoked")
	}
	fam, err := p.cfg.Sessions.Family(ctx, ac.SessionID)
	switch {
	case errors.Is(err, session.ErrNotFound):
		return nil, nil, errors.New("the token's session is unknown")
	case err != nil:
		return nil, nil, fmt.Errorf("%w: %v", errStore, err)
	case fam.Ended(p.cfg.Now()) != "":
		return nil, nil, errors.New("the token's session has ended")
	}
	return all, &ac, nil
}

var errStore = errors.New("session store unavailable")

// ServeUserInfo is the UserInfo endpoint (OpenID Connect Core §5.3), GET
// and POST, with the access token as a Bearer token (RFC 6750 §2.1, or
// §2.2 as a form field in a POST). It answers the claims the token's
// scopes release, as the ID token does, with the same sub.
func (p *Provider) ServeUserInfo(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok && r.Method == http.MethodPost && r.Header.Get("Authorization") == "" {
		form, ref := oauthhttp.ReadForm(w, r)
		if ref != nil {
			bearerError(w, http.StatusBadRequest, "invalid_request", ref.Description)
			return
		}
		tok = form.Get("access_token")
	}
	if tok == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tsidp"`)
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, "an access token is required", http.StatusUnauthorized)
		return
	}
	all, ac, err := p.checkAccessToken(r.Context(), strings.TrimSpace(tok))
	if errors.Is(err, errStore) {
		p.cfg.Logf("oidc: userinfo: %v", err)
		w.Header().Set("Retry-After", "1")
		bearerError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "tsidp cannot check the token right now")
		return
	}
	if err != nil {
		bearerError(w, http.StatusUnauthorized, "invalid_token", err.Error())
		return
	}
	scopes := strings.Fields(ac.Scope)
	if !slices.Contains(scopes, clients.ScopeOpenID) {
		bearerError(w, http.StatusForbidden, "insufficient_scope", "the token was not issued with the openid scope")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(release(all, scopes))
}

// bearerError answers an RFC 6750 §3 error.
func bearerError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="tsidp", error=%q, error_description=%q`, code, desc))
	oauthhttp.WriteError(w, status, code, desc)
}
