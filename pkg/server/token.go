package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tsidp/tsidp/internal/duration"
	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/keys"
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

// oauthError is an RFC 6749 §5.2 error answer.
type oauthError struct {
	status int
	code   string
	desc   string
}

func (e *oauthError) Error() string { return e.code + ": " + e.desc }

func badRequest(desc string) *oauthError {
	return &oauthError{http.StatusBadRequest, "invalid_request", desc}
}

// tokenRequest is a parsed, syntactically valid POST /token.
type tokenRequest struct {
	audience string
	scopes   []string
	ttl      time.Duration
}

// parseTokenRequest reads and checks the form. Only the body counts: query
// parameters are ignored, and a parameter given twice is an error (RFC 6749 §3.2).
func parseTokenRequest(w http.ResponseWriter, r *http.Request) (*tokenRequest, *oauthError) {
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/x-www-form-urlencoded" {
		return nil, badRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &oauthError{http.StatusRequestEntityTooLarge, "invalid_request",
				fmt.Sprintf("request body is over %d bytes", maxFormBytes)}
		}
		return nil, badRequest("malformed form body")
	}
	form := r.PostForm
	for k, v := range form {
		if len(v) > 1 {
			return nil, badRequest(fmt.Sprintf("parameter %q is given more than once", k))
		}
	}
	switch gt := form.Get("grant_type"); gt {
	case "", "client_credentials":
	default:
		return nil, &oauthError{http.StatusBadRequest, "unsupported_grant_type",
			fmt.Sprintf("grant_type %q is not supported; use client_credentials", gt)}
	}
	aud, res := form.Get("audience"), form.Get("resource")
	switch {
	case aud != "" && res != "" && aud != res:
		return nil, badRequest("give either audience or resource, not both")
	case aud == "" && res == "":
		return nil, badRequest("audience (or resource) is required")
	case aud == "":
		aud = res
	}
	tr := &tokenRequest{audience: aud}
	if sc := form.Get("scope"); sc != "" {
		tr.scopes = strings.Fields(sc)
	}
	if v := form.Get("ttl"); v != "" {
		d, err := parseTTL(v)
		if err != nil {
			return nil, badRequest(err.Error())
		}
		tr.ttl = d
	}
	return tr, nil
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

// identityError maps an identity failure to what the caller sees. Nothing
// here says more than the caller needs: no internal addresses, no backends.
func identityError(err error) *oauthError {
	var denied *identity.DeniedError
	switch {
	case errors.As(err, &denied):
		return &oauthError{http.StatusForbidden, "access_denied", denied.Reason}
	case errors.Is(err, identity.ErrUnknownPeer):
		return &oauthError{http.StatusUnauthorized, "invalid_client", "caller is not a node of this tailnet"}
	default:
		return &oauthError{http.StatusServiceUnavailable, "temporarily_unavailable",
			"tailnet identity is unavailable; try again shortly"}
	}
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	t, alg, oerr := s.authorize(w, r)
	if oerr == nil {
		oerr = s.respondWithToken(w, &t, alg)
	}
	if oerr != nil {
		s.metrics.requests.Add(oerr.code, 1)
		if oerr.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Tailscale realm="tailnet"`)
		}
		if oerr.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, oerr.status, oerr.code, oerr.desc)
		return
	}
	s.metrics.requests.Add("ok", 1)
	s.metrics.issued.Add(1)
}

// respondWithToken encodes and signs t straight into the response buffer.
func (s *Server) respondWithToken(w http.ResponseWriter, t *claims.Token, alg keys.Algorithm) *oauthError {
	pb, rb := tokenBufs.Get().(*[]byte), tokenBufs.Get().(*[]byte)
	defer func() { tokenBufs.Put(pb); tokenBufs.Put(rb) }()

	payload := t.AppendJSON((*pb)[:0])
	*pb = payload
	b := append((*rb)[:0], `{"access_token":"`...)
	b, kid, err := s.cfg.Signer.Sign(b, alg, payload)
	if err != nil {
		s.cfg.Logf("token: signing for %q with %s: %v", t.Audience, alg, err)
		return &oauthError{http.StatusInternalServerError, "server_error", "could not sign the token"}
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
	s.cfg.Logf("token: issued sub=%s aud=%q kid=%s jti=%s ttl=%v", t.Subject, t.Audience, kid, t.ID, ttl)
	return nil
}

// authorize runs the request path up to signing: parse, identify, policy,
// enrich. It returns claims only when every step succeeded: any doubt is an
// error.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (claims.Token, keys.Algorithm, *oauthError) {
	req, oerr := parseTokenRequest(w, r)
	if oerr != nil {
		return claims.Token{}, "", oerr
	}
	// Identity comes before the audience lookup, so that callers outside
	// the tailnet learn nothing about which audiences exist.
	id, err := s.identify(r)
	if err != nil {
		oe := identityError(err)
		if oe.status == http.StatusServiceUnavailable {
			s.cfg.Logf("token: %v", err)
		} else {
			s.refusalLogf("token: refused %s: %s (%v)", r.RemoteAddr, oe.code, err)
		}
		return claims.Token{}, "", oe
	}
	aud := s.cfg.Policy.Audience(req.audience)
	if aud == nil {
		return claims.Token{}, "", &oauthError{http.StatusBadRequest, "invalid_target",
			fmt.Sprintf("audience %q is not configured", req.audience)}
	}
	for _, sc := range req.scopes {
		if !aud.ScopeAllowed(sc) {
			return claims.Token{}, "", &oauthError{http.StatusBadRequest, "invalid_scope",
				fmt.Sprintf("scope %q is not available for audience %q", sc, aud.Name)}
		}
	}

	// Refuse before asking plugins when nothing they say could change the
	// answer: they would see (and look up) callers who get no token, and a
	// plugin that is down would turn this 403 into a 503.
	admitted := aud.Allows(id, nil)
	if !admitted && !aud.UsesGroups() && !s.mayBeGranted(r, id, aud, req.scopes) {
		s.refusalLogf("token: refused sub=%s node=%s aud=%q: no allow rule matches", id.Subject, id.NodeName, aud.Name)
		return claims.Token{}, "", &oauthError{http.StatusForbidden, "access_denied",
			fmt.Sprintf("%s may not get tokens for audience %q", describe(id), aud.Name)}
	}
	extra, granted, limit, oerr := s.enrich(r, id, aud, req.scopes)
	if oerr != nil {
		return claims.Token{}, "", oerr
	}
	if !admitted && !granted && !aud.Allows(id, claims.Strings(extra, "groups")) {
		s.refusalLogf("token: refused sub=%s node=%s aud=%q: no allow rule matches", id.Subject, id.NodeName, aud.Name)
		return claims.Token{}, "", &oauthError{http.StatusForbidden, "access_denied",
			fmt.Sprintf("%s may not get tokens for audience %q", describe(id), aud.Name)}
	}
	ttl, err := aud.TTLFor(req.ttl, limit)
	switch {
	case errors.Is(err, audience.ErrCappedBelowMin):
		// enrich refuses such caps first; this is the backstop.
		return claims.Token{}, "", &oauthError{http.StatusForbidden, "access_denied", err.Error()}
	case err != nil:
		return claims.Token{}, "", badRequest(err.Error())
	}
	now := s.cfg.Now()
	return claims.Token{
		Issuer:    s.cfg.Issuer,
		Subject:   id.Subject,
		Audience:  aud.Name,
		IssuedAt:  now,
		NotBefore: now,
		Expiry:    now.Add(ttl),
		ID:        newJTI(),
		Scope:     strings.Join(req.scopes, " "),
		Identity:  id,
		Extra:     extra,
	}, keys.Algorithm(aud.Algorithm), nil
}

// mayBeGranted reports whether an AudienceGranter (tailnet grants) grants
// id the audience. enrich asks them again, with the others, when it does;
// they answer from memory. A granter that fails grants nothing.
func (s *Server) mayBeGranted(r *http.Request, id *identity.Identity, aud *audience.Audience, scopes []string) bool {
	var req *claims.Request
	for _, e := range s.cfg.Enrichers {
		if _, ok := e.(claims.AudienceGranter); !ok {
			continue
		}
		if req == nil {
			req = &claims.Request{Identity: id, Audience: aud.Name, Scopes: scopes}
		}
		if res, err := e.Enrich(r.Context(), req); err == nil && res != nil && !res.Deny && contains(res.Audiences, aud.Name) {
			return true
		}
	}
	return false
}

// enrich asks every enricher in order and merges their claims. Any enricher
// failure refuses the token: plugins apply their own on-error policy and only
// report an error when that policy is to deny.
func (s *Server) enrich(r *http.Request, id *identity.Identity, aud *audience.Audience, scopes []string) (extra []claims.Claim, granted bool, limit time.Duration, _ *oauthError) {
	if len(s.cfg.Enrichers) == 0 {
		return nil, false, 0, nil
	}
	req := &claims.Request{Identity: id, Audience: aud.Name, Scopes: scopes}
	for _, e := range s.cfg.Enrichers {
		res, err := e.Enrich(r.Context(), req)
		if err != nil {
			s.cfg.Logf("token: enricher %s: %v", e.Name(), err)
			return nil, false, 0, &oauthError{http.StatusServiceUnavailable, "temporarily_unavailable",
				fmt.Sprintf("claims source %q is unavailable", e.Name())}
		}
		if res == nil {
			continue
		}
		if res.Deny {
			reason := res.Reason
			if reason == "" {
				reason = "refused by " + e.Name()
			}
			s.refusalLogf("token: refused sub=%s aud=%q by %s: %s", id.Subject, aud.Name, e.Name(), reason)
			return nil, false, 0, &oauthError{http.StatusForbidden, "access_denied", reason}
		}
		valid := res.Claims[:0:0]
		for _, c := range res.Claims {
			if err := c.Validate(nil); err != nil {
				s.cfg.Logf("token: enricher %s: dropping claim: %v", e.Name(), err)
				continue
			}
			valid = append(valid, c)
		}
		extra = claims.Merge(extra, valid)
		if _, ok := e.(claims.AudienceGranter); ok && contains(res.Audiences, aud.Name) {
			granted = true
		}
		if res.MaxTTL > 0 && res.MaxTTL < audience.MinTTL {
			// Fail closed: a token that expires as it is issued is no
			// token, and a longer one than the cap is not allowed.
			s.refusalLogf("token: refused sub=%s aud=%q: %s capped the lifetime at %v, below the minimum %v", id.Subject, aud.Name, e.Name(), res.MaxTTL, audience.MinTTL)
			return nil, false, 0, &oauthError{http.StatusForbidden, "access_denied",
				fmt.Sprintf("the token lifetime was capped below the minimum of %v by %s", audience.MinTTL, e.Name())}
		}
		if res.MaxTTL > 0 && (limit == 0 || res.MaxTTL < limit) {
			limit = res.MaxTTL
		}
	}
	size := 0
	for _, c := range extra {
		size += len(c.Name) + len(c.Value)
	}
	if size > claims.MaxExtraBytes {
		s.cfg.Logf("token: extra claims for %s total %d bytes, over %d", id.Subject, size, claims.MaxExtraBytes)
		return nil, false, 0, &oauthError{http.StatusInternalServerError, "server_error", "claims for this caller are too large"}
	}
	return extra, granted, limit, nil
}

func describe(id *identity.Identity) string {
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

// writeError writes an RFC 6749 §5.2 JSON error.
func writeError(w http.ResponseWriter, status int, code, desc string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	b := make([]byte, 0, 64+len(desc))
	b = append(b, `{"error":`...)
	b = claims.AppendQuoted(b, code)
	b = append(b, `,"error_description":`...)
	b = claims.AppendQuoted(b, desc)
	b = append(b, "}\n"...)
	w.Write(b)
}
