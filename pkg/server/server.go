// Package server is tsidp's HTTP surface: discovery, JWKS, the token
// endpoint and health checks, routed with chi.
//
// The caller's identity comes only from the connection's peer address, via an
// identity.Source, resolved once per connection and reused for a bounded time.
// No header is ever consulted for identity.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"expvar"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"tailscale.com/metrics"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/keys"
)

// Signer signs token payloads and publishes the verification keys.
// *keys.Manager implements it.
type Signer interface {
	Sign(dst []byte, alg keys.Algorithm, payload []byte) ([]byte, string, error)
	JWKS() (body []byte, etag string)
}

var _ Signer = (*keys.Manager)(nil)

// Check is a named readiness check for /readyz.
//
// /readyz is reachable by anyone who can reach tsidp, so it shows a check's
// Reason, never its error: errors carry socket paths, etcd endpoints and
// plugin output. The error is logged when the check's status changes, and
// the admin API reports the current details.
type Check struct {
	Name  string
	Check func(context.Context) error
	// Reason is what /readyz says while the check fails: short, fixed and
	// free of internal detail. Empty means "check failed".
	Reason string
	// Degrades marks a check whose failure does not stop token issuance
	// (e.g. a replicated key store that is unreachable while the keys in
	// memory still sign): /readyz then answers 200 with status "degraded"
	// instead of 503, so that load balancers keep the instance while
	// monitoring sees the problem.
	Degrades bool
}

// Statuses of a readiness check in /readyz.
const (
	CheckOK       = "ok"
	CheckDegraded = "degraded" // failing, but tokens are still issued
	CheckFailing  = "failing"  // failing, and /readyz answers 503
)

// Config wires a Server.
type Config struct {
	// Issuer is the "iss" of every token and the base URL of the endpoints,
	// used exactly as given: an http or https URL without a path (not even
	// a trailing slash), query or fragment.
	Issuer string
	// Source identifies callers.
	Source identity.Source
	// Signer signs tokens and renders JWKS.
	Signer Signer
	// Policy holds the audiences.
	Policy *audience.Registry
	// Enrichers add claims, in merge order (tailnet grants, then plugins).
	Enrichers []claims.Enricher
	// Algorithms are the published signing algorithms, for discovery.
	Algorithms []string
	// JWKSMaxAge is the Cache-Control max-age of the JWKS. Key rotation
	// publishes new keys at least this long (plus skew) before use.
	JWKSMaxAge time.Duration
	// IdentityCacheTTL bounds how long a connection's identity is reused
	// before WhoIs is asked again. Default 5s: WhoIs stays off the
	// per-request path of a busy connection, while a removed node or a
	// changed grant takes effect within seconds even on a connection that
	// is kept alive. (Grant changes reach tailscaled as packet-filter
	// updates that its IPN bus does not announce, so there is no event to
	// invalidate on.)
	IdentityCacheTTL time.Duration
	// Ready lists extra readiness checks (key store, plugins).
	Ready []Check
	// Logf logs; nil discards.
	Logf func(format string, args ...any)
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Server serves tsidp's HTTP endpoints.
type Server struct {
	cfg Config
	// refusalLogf logs refused requests (401, 403) for audit, rate limited
	// so that a caller hammering tsidp cannot flood the log.
	refusalLogf func(format string, args ...any)
	router      chi.Router
	discovery   []byte
	oauthMeta   []byte
	metrics     *serverMetrics

	readyMu    sync.Mutex
	readyState map[string]string // check name → last status seen, for logging changes
}

// Limits on what a caller can make the server read.
const (
	maxFormBytes   = 16 << 10
	maxHeaderBytes = 16 << 10
)

// New validates cfg and builds the server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Source == nil:
		return nil, errors.New("server: no identity source")
	case cfg.Signer == nil:
		return nil, errors.New("server: no signer")
	case cfg.Policy == nil:
		return nil, errors.New("server: no policy")
	}
	if err := checkIssuer(cfg.Issuer); err != nil {
		return nil, err
	}
	if cfg.IdentityCacheTTL == 0 {
		cfg.IdentityCacheTTL = 5 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, metrics: newServerMetrics(),
		refusalLogf: logger.RateLimitedFn(cfg.Logf, time.Minute, 30, 100)}
	var err error
	if s.discovery, s.oauthMeta, err = s.metadata(); err != nil {
		return nil, err
	}
	r := chi.NewRouter()
	r.Use(securityHeaders)
	// allowed is each path's methods, for the Allow header of a 405
	// (RFC 9110 §15.5.6). Every GET endpoint also answers HEAD.
	allowed := map[string]string{}
	route := func(path string, h http.HandlerFunc, methods ...string) {
		for _, m := range methods {
			r.Method(m, path, h)
		}
		allowed[path] = strings.Join(methods, ", ")
	}
	route("/.well-known/openid-configuration", s.serveStatic(s.discovery), http.MethodGet, http.MethodHead)
	route("/.well-known/oauth-authorization-server", s.serveStatic(s.oauthMeta), http.MethodGet, http.MethodHead)
	route("/.well-known/jwks.json", s.serveJWKS, http.MethodGet, http.MethodHead)
	route("/token", s.serveToken, http.MethodPost)
	route("/healthz", s.serveHealthz, http.MethodGet, http.MethodHead)
	route("/readyz", s.serveReadyz, http.MethodGet, http.MethodHead)
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		if a := allowed[r.URL.Path]; a != "" {
			w.Header().Set("Allow", a)
		}
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "method "+r.Method+" is not allowed here")
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request", "no such endpoint")
	})
	s.router = r
	return s, nil
}

// checkIssuer refuses an issuer the server cannot serve as given. The
// endpoints live at the root, and verifiers compare "iss" with the issuer
// they were configured with byte for byte, so the issuer is used exactly as
// written and must have no path, not even a trailing slash. Configuration
// validation says the same to users; this keeps other callers honest.
func checkIssuer(iss string) error {
	if iss == "" {
		return errors.New("server: no issuer")
	}
	u, err := url.Parse(iss)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return fmt.Errorf("server: issuer %q must be an http or https URL with no path (not even a trailing slash), query or fragment: tsidp serves at its root", iss)
	}
	return nil
}

// Handler returns the routed handler. Behind it, identity falls back to
// r.RemoteAddr when the connection was not accepted by NewHTTPServer's server.
func (s *Server) Handler() http.Handler { return s.router }

// Metrics returns the server's counters for the metrics listener.
func (s *Server) Metrics() expvar.Var { return s.metrics.root }

// NewHTTPServer returns an http.Server for s with timeouts and size limits
// set, and with per-connection identity caching wired in.
func (s *Server) NewHTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.router,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext:       connContext,
		ErrorLog:          nil,
	}
}

// connState is the per-connection identity cache. Tailnet connections map
// one-to-one to a peer node, so one WhoIs answers for every request on the
// connection until the cache ages out.
type connState struct {
	peer netip.AddrPort

	mu sync.Mutex
	id *identity.Identity
	at time.Time
}

type connKey struct{}

func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connState{peer: addrPortOf(c.RemoteAddr())})
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// identify returns the caller's identity, from the connection cache when it
// is fresh and the backend is still ready.
func (s *Server) identify(r *http.Request) (*identity.Identity, error) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	if cs == nil {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			return nil, fmt.Errorf("%w: unparsable peer address", identity.ErrUnknownPeer)
		}
		return s.cfg.Source.Identify(r.Context(), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	if !cs.peer.IsValid() {
		return nil, fmt.Errorf("%w: connection without a peer address", identity.ErrUnknownPeer)
	}
	now := s.cfg.Now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.id != nil && now.Sub(cs.at) < s.cfg.IdentityCacheTTL {
		// The cached identity is only as good as the backend: if tailscaled
		// went away, answer 503 like an uncached request would.
		if c, ok := s.cfg.Source.(identity.Checker); ok {
			if err := c.Ready(r.Context()); err != nil {
				return nil, err
			}
		}
		return cs.id, nil
	}
	id, err := s.cfg.Source.Identify(r.Context(), cs.peer)
	if err != nil {
		cs.id = nil
		return nil, err
	}
	cs.id, cs.at = id, now
	return id, nil
}

func (s *Server) metadata() (discovery, oauth []byte, err error) {
	iss := s.cfg.Issuer
	algs := s.cfg.Algorithms
	if algs == nil {
		algs = []string{}
	}
	var scopes []string
	for _, name := range s.cfg.Policy.Names() {
		for _, sc := range s.cfg.Policy.Audience(name).Scopes {
			if !contains(scopes, sc) {
				scopes = append(scopes, sc)
			}
		}
	}
	common := map[string]any{
		"issuer":                                iss,
		"jwks_uri":                              iss + "/.well-known/jwks.json",
		"token_endpoint":                        iss + "/token",
		"grant_types_supported":                 []string{"client_credentials"},
		"token_endpoint_auth_methods_supported": []string{"none"},
		"response_types_supported":              []string{},
	}
	if len(scopes) > 0 {
		common["scopes_supported"] = scopes
	}
	oidc := map[string]any{
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": algs,
		"claims_supported": []string{
			"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope",
			"user_id", "login_name", "preferred_username", "email", "name", "picture",
			"tailnet", "node", "node_id", "tagged", "tags",
		},
	}
	// No token_endpoint_auth_signing_alg_values_supported: it describes
	// private_key_jwt and client_secret_jwt client authentication, and the
	// only method here is "none" (the tailnet connection is the credential).
	oauthDoc := map[string]any{}
	for k, v := range common {
		oidc[k] = v
		oauthDoc[k] = v
	}
	if discovery, err = json.MarshalIndent(oidc, "", "  "); err != nil {
		return nil, nil, err
	}
	if oauth, err = json.MarshalIndent(oauthDoc, "", "  "); err != nil {
		return nil, nil, err
	}
	return discovery, oauth, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (s *Server) serveStatic(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(s.cfg.JWKSMaxAge.Seconds())))
		w.Write(body)
	}
}

func (s *Server) serveJWKS(w http.ResponseWriter, r *http.Request) {
	body, etag := s.cfg.Signer.JWKS()
	h := w.Header()
	h.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(s.cfg.JWKSMaxAge.Seconds())))
	h.Set("ETag", etag)
	if etagMatches(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/json")
	w.Write(body)
}

// etagMatches implements If-None-Match's weak comparison over a list.
func etagMatches(header, etag string) bool {
	if header == "" || etag == "" {
		return false
	}
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == strings.TrimPrefix(etag, "W/") {
			return true
		}
	}
	return false
}

func (s *Server) serveHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

// identityReason is /readyz's reason for a failing identity check.
const identityReason = "tailnet identity is unavailable (tailscaled not reachable or not Running)"

// serveReadyz reports whether tokens can be issued now: the identity backend
// answers and every extra check (key store, plugins) passes. It shows each
// check's status and fixed reason; errors go to the log (see Check).
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	type result struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Reason string `json:"reason,omitempty"`
	}
	checks := s.cfg.Ready
	if c, ok := s.cfg.Source.(identity.Checker); ok {
		checks = append([]Check{{Name: "identity", Check: c.Ready, Reason: identityReason}}, checks...)
	}
	status := "ready"
	code := http.StatusOK
	results := make([]result, 0, len(checks))
	for _, c := range checks {
		res := result{Name: c.Name, Status: CheckOK}
		err := c.Check(ctx)
		if err != nil {
			res.Status, res.Reason = CheckFailing, c.Reason
			if c.Degrades {
				res.Status = CheckDegraded
			}
			if res.Reason == "" {
				res.Reason = "check failed"
			}
			switch {
			case !c.Degrades:
				status, code = "not ready", http.StatusServiceUnavailable
			case code == http.StatusOK:
				status = "degraded"
			}
		}
		s.noteReadiness(c.Name, res.Status, err)
		results = append(results, res)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"status": status, "checks": results})
}

// noteReadiness logs a check's error when its status changes, so that the
// log has the detail /readyz leaves out, once per change rather than once
// per probe. Checks start out as ok.
func (s *Server) noteReadiness(name, status string, err error) {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	prev, ok := s.readyState[name]
	if !ok {
		prev = CheckOK
	}
	if status == prev {
		return
	}
	if s.readyState == nil {
		s.readyState = make(map[string]string)
	}
	s.readyState[name] = status
	if err == nil {
		s.cfg.Logf("readyz: check %s is %s again (was %s)", name, status, prev)
		return
	}
	s.cfg.Logf("readyz: check %s is %s: %v", name, status, err)
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

type serverMetrics struct {
	root     *metrics.Set
	requests *metrics.LabelMap // by outcome
	issued   *expvar.Int
}

func newServerMetrics() *serverMetrics {
	m := &serverMetrics{
		root:     new(metrics.Set),
		requests: &metrics.LabelMap{Label: "outcome"},
		issued:   new(expvar.Int),
	}
	m.root.Set("counter_token_requests", m.requests)
	m.root.Set("counter_tokens_issued", m.issued)
	return m
}
