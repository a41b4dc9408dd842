package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tsidp/tsidp/internal/duration"
	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/oidc"
)

// IssuedTokenType is RFC 8693's token type for JWTs.
const IssuedTokenType = "urn:ietf:params:oauth:token-type:jwt"

// tokenBufs recycles the buffers a token is encoded and signed into, so a
// steady stream of requests does not allocate them afresh.
var tokenBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// Header values shared by every answer. Assigning these slices directly
// instead of calling Header.Set saves allocations on the hot path; net/http
// never modifies header values it is given.
var (
	hvJSON    = []string{"application/json"}
	hvNoStore = []string{"no-store"}
	hvNoCache = []string{"no-cache"}
)

// parseTokenRequest checks a client_credentials (or grant-less) token
// request's form.
func parseTokenRequest(form url.Values) (issue.Request, *issue.Refusal) {
	switch gt := form.Get("grant_type"); gt {
	case "", "client_credentials":
	default:
		ref := issue.InvalidRequest(fmt.Sprintf("grant_type %q is not supported", gt))
		ref.Code = "unsupported_grant_type"
		return issue.Request{}, ref
	}
	aud, res := form.Get("audience"), form.Get("resource")
	switch {
	case aud != "" && res != "" && aud != res:
		return issue.Request{}, issue.InvalidRequest("give either audience or resource, not both")
	case aud == "" && res == "":
		return issue.Request{}, issue.InvalidRequest("audience (or resource) is required")
	case aud == "":
		aud = res
	}
	req := issue.Request{Audience: aud}
	if sc := form.Get("scope"); sc != "" {
		req.Scopes = strings.Fields(sc)
	}
	if v := form.Get("ttl"); v != "" {
		d, err := parseTTL(v)
		if err != nil {
			return issue.Request{}, issue.InvalidRequest(err.Error())
		}
		req.TTL = d
	}
	return req, nil
}

// parseTTL accepts whole seconds ("300") or a Go duration ("5m").
func parseTTL(v string) (time.Duration, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 || n > int64(365*24*time.Hour/time.Second) {
			return 0, fmt.Errorf("ttl %q is out of range", v)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := duration.Parse(v)
	if errors.Is(err, duration.ErrOutOfRange) {
		return 0, fmt.Errorf("ttl %q is out of range", v)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("ttl %q is not a number of seconds or a duration like 5m", v)
	}
	return d, nil
}

// serveToken is POST /token: parse, identify, decide, sign, answer.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	ref := s.issueToken(w, r)
	if ref == nil {
		s.metrics.requests.Add("ok", 1)
		s.metrics.issued.Add(1)
		return
	}
	s.metrics.requests.Add(ref.Code, 1)
	oauthhttp.Refuse(w, ref, `Tailscale realm="tailnet"`)
}

// issueToken answers with a token, or returns why not without answering.
func (s *Server) issueToken(w http.ResponseWriter, r *http.Request) *issue.Refusal {
	form, ref := oauthhttp.ReadForm(w, r)
	if ref != nil {
		return ref
	}
	if p := s.cfg.Provider; p != nil && oidc.Handles(form.Get("grant_type")) {
		p.ServeToken(w, r, form)
		return nil
	}
	req, ref := parseTokenRequest(form)
	if ref != nil {
		return ref
	}
	// Identity comes before the decision, so that callers outside the
	// tailnet learn nothing about which audiences exist.
	id, err := s.identifier.Identify(r)
	if err != nil {
		ref := issue.IdentityRefusal(err)
		if ref.Status == http.StatusServiceUnavailable {
			s.cfg.Logf("token: %v", err)
		} else {
			s.refusalLogf("token: refused %s: %s (%s)", r.RemoteAddr, ref.Code, ref.Reason)
		}
		return ref
	}
	d, ref := s.cfg.Core.Decide(r.Context(), id, req)
	if ref != nil {
		return ref
	}
	return s.respondWithToken(w, &d.Token, d.Algorithm, d.Type)
}

// respondWithToken encodes and signs t straight into the response buffer.
func (s *Server) respondWithToken(w http.ResponseWriter, t *claims.Token, alg keys.Algorithm, typ keys.Type) *issue.Refusal {
	pb, rb := tokenBufs.Get().(*[]byte), tokenBufs.Get().(*[]byte)
	defer func() { tokenBufs.Put(pb); tokenBufs.Put(rb) }()

	payload := t.AppendJSON((*pb)[:0])
	*pb = payload
	b := append((*rb)[:0], `{"access_token":"`...)
	b, _, err := s.cfg.Signer.SignAs(b, alg, typ, payload)
	if err != nil {
		s.cfg.Logf("token: signing for %q with %s: %v", t.Audience, alg, err)
		return &issue.Refusal{Status: http.StatusInternalServerError, Code: "server_error",
			Description: "could not sign the token", Reason: "signing failed: " + err.Error()}
	}
	ttl := t.Expiry.Sub(t.IssuedAt)
	b = append(b, `","token_type":"Bearer","expires_in":`...)
	b = strconv.AppendInt(b, int64(ttl/time.Second), 10)
	b = append(b, `,"issued_token_type":"`+IssuedTokenType+`"`...)
	if t.Scope != "" {
		b = append(b, `,"scope":`...)
		b = claims.AppendQuoted(b, t.Scope)
	}
	b = append(b, "}\n"...)
	*rb = b
	h := w.Header()
	h["Content-Type"] = hvJSON
	h["Cache-Control"] = hvNoStore
	h["Pragma"] = hvNoCache
	w.Write(b)
	return nil
}
