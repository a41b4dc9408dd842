package oidc

import (
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/session"
)

// Bounds on what a client can make tsidp store per login.
const (
	maxStateBytes = 1024
	maxNonceBytes = 512
)

// pkceChallenge is an S256 code challenge: the base64url SHA-256 of a
// verifier, 43 characters (RFC 7636 §4.2).
var pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// authRequest is a checked authorization request.
type authRequest struct {
	client    *clients.Client
	redirect  string
	state     string
	nonce     string
	challenge string
	scopes    []string
	prompt    []string
}

// authError is an error to send back to the client by redirect (RFC 6749
// §4.1.2.1), once client and redirect URI are known to be good.
type authError struct {
	code, desc string
}

// ServeAuthorize is the authorization endpoint (GET and POST, OpenID
// Connect Core §3.1.2.1). Errors about the client or the redirect URI are
// shown to the person and never redirected, so tsidp cannot be used to
// send a browser anywhere; every other answer goes to the client's
// registered redirect URI. The browser is identified by its connection.
func (p *Provider) ServeAuthorize(w http.ResponseWriter, r *http.Request) {
	params := r.URL.Query()
	if r.Method == http.MethodPost {
		form, ref := oauthhttp.ReadForm(w, r)
		if ref != nil {
			p.pages.problem(w, r, ref.Status, "This sign-in request is malformed", ref.Description)
			return
		}
		params = form
	} else if ref := oauthhttp.Single(params); ref != nil {
		p.pages.problem(w, r, http.StatusBadRequest, "This sign-in request is malformed", ref.Description)
		return
	}
	req, aerr, ok := p.parseAuthRequest(w, r, params)
	if !ok {
		return // a page was shown
	}
	if aerr != nil {
		p.redirectError(w, r, req, aerr.code, aerr.desc)
		return
	}
	id, err := p.cfg.Identify(r)
	if err != nil {
		ref := issue.IdentityRefusal(err)
		p.pages.notIdentified(w, r, ref)
		return
	}
	d, ref := p.cfg.Core.DecideLogin(r.Context(), id, issue.LoginRequest{Client: req.client.Policy, TaggedDevices: req.client.TaggedDevices, Scopes: req.scopes})
	if ref != nil {
		switch ref.Code {
		case "invalid_scope", "invalid_request":
			p.redirectError(w, r, req, ref.Code, ref.Description)
		default:
			// Never a redirect: the page says who tsidp sees and why.
			p.pages.refused(w, r, ref, id, req.client)
		}
		return
	}
	_ = d // the claims are decided again at the code exchange
	confirm := p.cfg.Confirm || req.client.Confirm || slices.Contains(req.prompt, "consent")
	if confirm {
		if slices.Contains(req.prompt, "none") {
			p.redirectError(w, r, req, "consent_required", "this client asks people to confirm each sign-in")
			return
		}
		p.askConfirmation(w, r, req, id)
		return
	}
	p.issueCode(w, r, req, id)
}

// parseAuthRequest checks the request. ok is false when a page was shown
// (the client or redirect URI is bad); otherwise an authError goes back to
// the client.
func (p *Provider) parseAuthRequest(w http.ResponseWriter, r *http.Request, q url.Values) (req *authRequest, aerr *authError, ok bool) {
	c := p.cfg.Clients.Client(q.Get("client_id"))
	if c == nil {
		p.pages.problem(w, r, http.StatusBadRequest, "Unknown application",
			"The application that sent you here is not registered with tsidp (unknown client_id). Ask its administrator to configure it.")
		return nil, nil, false
	}
	redirect := q.Get("redirect_uri")
	if redirect == "" || !c.RedirectAllowed(redirect) {
		p.pages.problem(w, r, http.StatusBadRequest, "This sign-in request cannot be answered",
			"The application "+c.Name+" asked tsidp to send you to an address it has not registered (redirect_uri). tsidp does not follow it.")
		return nil, nil, false
	}
	req = &authRequest{client: c, redirect: redirect, state: q.Get("state"), nonce: q.Get("nonce"),
		challenge: q.Get("code_challenge"), scopes: strings.Fields(q.Get("scope")), prompt: strings.Fields(q.Get("prompt"))}
	fail := func(code, desc string) (*authRequest, *authError, bool) { return req, &authError{code, desc}, true }
	switch {
	case len(req.state) > maxStateBytes:
		req.state = ""
		return fail("invalid_request", "state is too long")
	case q.Get("request") != "":
		return fail("request_not_supported", "request objects are not supported")
	case q.Get("request_uri") != "":
		return fail("request_uri_not_supported", "request_uri is not supported")
	case q.Get("response_type") != "code":
		return fail("unsupported_response_type", "response_type must be code")
	case q.Get("response_mode") != "" && q.Get("response_mode") != "query":
		return fail("invalid_request", "response_mode must be query")
	case len(req.nonce) > maxNonceBytes:
		return fail("invalid_request", "nonce is too long")
	}
	switch m := q.Get("code_challenge_method"); {
	case req.challenge == "" && m != "":
		return fail("invalid_request", "code_challenge_method without code_challenge")
	case req.challenge == "" && c.RequirePKCE:
		return fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method S256")
	case req.challenge == "" && req.nonce == "":
		return fail("invalid_request", "a client without PKCE must send a nonce")
	case req.challenge != "" && m != "S256":
		// An absent method means plain (RFC 7636 §4.3), which is refused.
		return fail("invalid_request", "code_challenge_method must be S256 (plain is not supported)")
	case req.challenge != "" && !pkceChallenge.MatchString(req.challenge):
		return fail("invalid_request", "code_challenge is not an S256 challenge (43 base64url characters)")
	}
	if len(req.scopes) == 0 {
		return fail("invalid_scope", "scope is required (openid for OpenID Connect)")
	}
	for _, pr := range req.prompt {
		switch pr {
		case "none", "login", "consent", "select_account":
		default:
			return fail("invalid_request", "unknown prompt value "+pr)
		}
	}
	if slices.Contains(req.prompt, "none") && len(req.prompt) > 1 {
		return fail("invalid_request", "prompt none goes alone")
	}
	return req, nil, true
}

// issueCode stores a new code for req and sends the browser back to the
// client with it.
func (p *Provider) issueCode(w http.ResponseWriter, r *http.Request, req *authRequest, id *identity.Identity) {
	code := session.NewSecret()
	now := p.cfg.Now()
	c := &session.Code{
		ClientID: req.client.ID, RedirectURI: req.redirect, Challenge: req.challenge, Nonce: req.nonce,
		Scopes: req.scopes, Subject: subjectOf(id), AuthTime: now, Expires: now.Add(CodeTTL),
	}
	if err := p.cfg.Sessions.PutCode(r.Context(), session.CodeHash(code), c); err != nil {
		p.cfg.Logf("oidc: storing a code: %v", err)
		p.redirectError(w, r, req, "temporarily_unavailable", "tsidp could not record the sign-in; try again")
		return
	}
	p.redirect(w, r, req, url.Values{"code": {code}})
}

// redirectError sends an authorization error to the client.
func (p *Provider) redirectError(w http.ResponseWriter, r *http.Request, req *authRequest, code, desc string) {
	p.redirect(w, r, req, url.Values{"error": {code}, "error_description": {desc}})
}

// redirect sends the browser to req's redirect URI with params, the
// client's state and tsidp's issuer (RFC 9207), keeping the URI's own
// query.
func (p *Provider) redirect(w http.ResponseWriter, r *http.Request, req *authRequest, params url.Values) {
	u, err := url.Parse(req.redirect)
	if err != nil { // checked at configuration; never here
		p.pages.problem(w, r, http.StatusInternalServerError, "Something went wrong", "tsidp could not build the address to send you back to.")
		return
	}
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	if req.state != "" {
		q.Set("state", req.state)
	}
	q.Set("iss", p.issuer)
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}
