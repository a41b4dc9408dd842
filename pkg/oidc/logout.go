package oidc

import (
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/keys"
)

// ServeEndSession is RP-initiated logout (OpenID Connect RP-Initiated
// Logout 1.0), GET and POST. The client sends the ID token of the session
// (id_token_hint; an expired one will do): tsidp ends that session — its
// refresh tokens and newest access token stop working at once — and sends
// the browser to post_logout_redirect_uri if the client registered it,
// else shows that the person is signed out. Without a valid hint there is
// no session to end, and no redirect.
func (p *Provider) ServeEndSession(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		form, ref := oauthhttp.ReadForm(w, r)
		if ref != nil {
			p.pages.problem(w, r, ref.Status, "This sign-out request is malformed", ref.Description)
			return
		}
		q = form
	} else if ref := oauthhttp.Single(q); ref != nil {
		p.pages.problem(w, r, http.StatusBadRequest, "This sign-out request is malformed", ref.Description)
		return
	}
	hint := q.Get("id_token_hint")
	var c *clients.Client
	var sid, sub string
	if hint != "" {
		var ok bool
		c, sid, sub, ok = p.checkIDTokenHint(hint)
		if !ok {
			p.pages.problem(w, r, http.StatusBadRequest, "This sign-out request cannot be answered",
				"The application sent an ID token that tsidp did not issue (id_token_hint).")
			return
		}
	}
	if id := q.Get("client_id"); id != "" {
		if c != nil && c.ID != id {
			p.pages.problem(w, r, http.StatusBadRequest, "This sign-out request cannot be answered",
				"The application's client_id and its ID token name different applications.")
			return
		}
		c = p.cfg.Clients.Client(id)
	}
	target := q.Get("post_logout_redirect_uri")
	if target != "" && (c == nil || !c.PostLogoutRedirectAllowed(target)) {
		p.pages.problem(w, r, http.StatusBadRequest, "This sign-out request cannot be answered",
			"The application asked tsidp to send you to an address it has not registered (post_logout_redirect_uri). tsidp does not follow it.")
		return
	}
	if sid != "" {
		p.revokeFamily(r.Context(), sid, "", "the person signed out (RP-initiated logout)")
	}
	if target == "" {
		p.pages.signedOut(w, r, c, sub != "")
		return
	}
	u, _ := url.Parse(target) // checked at configuration
	if st := q.Get("state"); st != "" {
		uq := u.Query()
		uq.Set("state", st)
		u.RawQuery = uq.Encode()
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

// checkIDTokenHint verifies an ID token tsidp issued (expiry is not
// checked: a hint is often an old token) and returns its client, session
// and subject.
func (p *Provider) checkIDTokenHint(hint string) (c *clients.Client, sid, sub string, ok bool) {
	v, err := p.cfg.Signer.Verify(hint)
	if err != nil || v.Type != keys.TypeJWT.String() {
		return nil, "", "", false
	}
	var claims struct {
		Issuer    string `json:"iss"`
		Audience  string `json:"aud"`
		Subject   string `json:"sub"`
		SessionID string `json:"sid"`
		AtHash    string `json:"at_hash"`
	}
	if json.Unmarshal(v.Payload, &claims) != nil || claims.Issuer != p.issuer || claims.AtHash == "" {
		return nil, "", "", false // at_hash: an ID token, not a POST /token token
	}
	c = p.cfg.Clients.Client(claims.Audience)
	if c == nil {
		return nil, "", "", false
	}
	return c, claims.SessionID, claims.Subject, true
}
