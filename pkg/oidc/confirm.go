package oidc

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/session"
)

// askConfirmation stores the checked request under a one-time token and
// shows the confirmation page, whose form carries the token. The token is
// the CSRF defence: a page on another site cannot read it, so it cannot
// make a browser confirm a login the person did not see; it is also bound
// to the node and person that asked, and used once.
func (p *Provider) askConfirmation(w http.ResponseWriter, r *http.Request, req *authRequest, id *identity.Identity) {
	tok := session.NewSecret()
	now := p.cfg.Now()
	pending := &session.Code{
		Pending: true, ClientID: req.client.ID, RedirectURI: req.redirect, Challenge: req.challenge, Nonce: req.nonce,
		State: req.state, Scopes: req.scopes, Subject: subjectOf(id), AuthTime: now, Expires: now.Add(ConfirmTTL),
	}
	if err := p.cfg.Sessions.PutCode(r.Context(), session.PendingHash(tok), pending); err != nil {
		p.cfg.Logf("oidc: storing a pending login: %v", err)
		p.redirectError(w, r, req, "temporarily_unavailable", "tsidp could not record the sign-in; try again")
		return
	}
	p.pages.confirm(w, r, req, id, tok)
}

// errNotYours refuses a confirmation from another node or person than the
// one that was asked.
var errNotYours = errors.New("this confirmation was shown to someone else")

// ServeConfirm is the confirmation form's POST. It must come from tsidp's
// own page (Sec-Fetch-Site and Origin, where the browser sends them), from
// the node and person it was shown to, with its one-time token, within
// ConfirmTTL.
func (p *Provider) ServeConfirm(w http.ResponseWriter, r *http.Request) {
	if !p.sameOrigin(r) {
		p.pages.problem(w, r, http.StatusForbidden, "This confirmation did not come from tsidp's page",
			"The sign-in was confirmed from another site, so tsidp ignored it. Start the sign-in again from the application.")
		return
	}
	form, ref := oauthhttp.ReadForm(w, r)
	if ref != nil {
		p.pages.problem(w, r, ref.Status, "This confirmation is malformed", ref.Description)
		return
	}
	id, err := p.cfg.Identify(r)
	if err != nil {
		p.pages.notIdentified(w, r, issue.IdentityRefusal(err))
		return
	}
	subj := subjectOf(id)
	pending, err := p.cfg.Sessions.RedeemCode(r.Context(), session.PendingHash(form.Get("request")), p.cfg.Now(), "", "", func(c *session.Code) error {
		if !c.Pending || c.Subject.Subject != subj.Subject || c.Subject.NodeID != subj.NodeID {
			return errNotYours
		}
		return nil
	})
	switch {
	case errors.Is(err, session.ErrNotFound), errors.Is(err, session.ErrRedeemed), errors.Is(err, errNotYours):
		p.pages.problem(w, r, http.StatusBadRequest, "This confirmation has expired or was used",
			"Each confirmation works once, for a few minutes, on the device it was shown on. Start the sign-in again from the application.")
		return
	case err != nil:
		p.cfg.Logf("oidc: reading a pending login: %v", err)
		p.pages.problem(w, r, http.StatusServiceUnavailable, "tsidp could not finish the sign-in", "Try again in a moment.")
		return
	}
	c := p.cfg.Clients.Client(pending.ClientID)
	if c == nil || !c.RedirectAllowed(pending.RedirectURI) {
		p.pages.problem(w, r, http.StatusBadRequest, "This application is no longer registered", "Its configuration changed since the sign-in began.")
		return
	}
	req := &authRequest{client: c, redirect: pending.RedirectURI, state: pending.State, nonce: pending.Nonce,
		challenge: pending.Challenge, scopes: pending.Scopes}
	if form.Get("action") != "allow" {
		p.redirectError(w, r, req, "access_denied", "the person declined the sign-in")
		return
	}
	p.issueCode(w, r, req, id)
}

// sameOrigin reports whether a form POST came from a page of tsidp's own
// origin, by the headers browsers send on such requests. A request without
// them (an old browser, curl) passes: the one-time token still protects
// it.
func (p *Provider) sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	iss, err2 := url.Parse(p.issuer)
	return err == nil && err2 == nil && u.Scheme == iss.Scheme && u.Host == iss.Host
}
