package oidc

import (
	"net/http"
	"net/url"

	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/issue"
)

// basicChallenge is the WWW-Authenticate of a failed client_secret_basic.
const basicChallenge = `Basic realm="tsidp"`

// authenticateClient finds and authenticates the client of a token request
// by its registered method (RFC 6749 §2.3): HTTP Basic or form secret, the
// tailnet identity of the connection (whatever secret is sent along), or
// none for a public client, which only names itself. A client may not use another method than its own, so
// a confidential client cannot be passed off as public. The challenge is
// the WWW-Authenticate for a 401.
func (p *Provider) authenticateClient(r *http.Request, form url.Values) (c *clients.Client, ref *issue.Refusal, challenge string) {
	basicID, basicSecret, hasBasic := r.BasicAuth()
	if hasBasic {
		// RFC 6749 §2.3.1: both are form-encoded inside Basic.
		var err1, err2 error
		basicID, err1 = url.QueryUnescape(basicID)
		basicSecret, err2 = url.QueryUnescape(basicSecret)
		if err1 != nil || err2 != nil {
			return nil, badClient("malformed client credentials"), basicChallenge
		}
	}
	id := form.Get("client_id")
	switch {
	case hasBasic && form.Get("client_secret") != "":
		return nil, issue.InvalidRequest("use one client authentication method, not both"), ""
	case hasBasic && id != "" && id != basicID:
		return nil, issue.InvalidRequest("client_id differs from the authenticated client"), ""
	case hasBasic:
		id = basicID
	}
	c = p.cfg.Clients.Client(id)
	if c == nil {
		return nil, badClient("unknown client"), basicChallenge
	}
	switch c.AuthMethod {
	case clients.AuthSecretBasic:
		if !hasBasic || !c.CheckSecret(basicSecret) {
			return nil, badClient("client authentication failed (client_secret_basic)"), basicChallenge
		}
	case clients.AuthSecretPost:
		if hasBasic || !c.CheckSecret(form.Get("client_secret")) {
			return nil, badClient("client authentication failed (client_secret_post)"), ""
		}
	case clients.AuthTailnet:
		// A secret sent along is ignored, not refused: software such as
		// oauth2-proxy will not run without one, and the connection is
		// what authenticates the client.
		caller, err := p.cfg.Identify(r)
		if err != nil {
			ref := issue.IdentityRefusal(err)
			if ref.Status == http.StatusServiceUnavailable {
				return nil, ref, ""
			}
			return nil, badClient("client authentication failed: the request did not come from a node of the tailnet"), ""
		}
		if _, ok := c.TailnetAuthenticates(caller); !ok {
			return nil, badClient("client authentication failed: the request came from a node that does not authenticate this client"), ""
		}
	case clients.AuthNone:
		if hasBasic || form.Get("client_secret") != "" {
			return nil, badClient("this is a public client: it sends no secret"), ""
		}
	}
	return c, nil, ""
}

func badClient(desc string) *issue.Refusal {
	return &issue.Refusal{Status: http.StatusUnauthorized, Code: "invalid_client", Description: desc, Reason: desc}
}
