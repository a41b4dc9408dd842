// Package server is tsidp's HTTP surface: discovery, JWKS, the token
// endpoint and health checks, routed with chi. It parses requests, asks
// the issuance core (pkg/issue) to decide, signs and answers; it decides
// nothing itself.
//
// The caller's identity comes only from the connection's peer address, via
// an identity.Source, resolved once per connection and reused for a
// bounded time (conn.go). No header is ever consulted for identity.
package server

import (
	"errors"
	"expvar"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/internal/httpsrv"
	"github.com/tsidp/tsidp/internal/oauthhttp"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/oidc"
)

// Signer signs token payloads and publishes the verification keys.
// *keys.Manager implements it.
type Signer interface {
	SignAs(dst []byte, alg keys.Algorithm, typ keys.Type, payload []byte) ([]byte, string, error)
	JWKS() (body []byte, etag string)
}

var _ Signer = (*keys.Manager)(nil)

// Config wires a Server.
type Config struct {
	// Core decides tokens; its issuer is the base URL of the endpoints.
	Core *issue.Core
	// Provider, if set, serves OpenID Connect logins: /authorize,
	// /userinfo, /logout and the code and refresh grants of /token.
	Provider *oidc.Provider
	// Identifier identifies callers by their connection; nil builds one
	// from Source and IdentityCacheTTL. Pass the one the Provider uses.
	Identifier *Identifier
	// Source identifies callers.
	Source identity.Source
	// Signer signs tokens and renders JWKS.
	Signer Signer
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
	Logf logger.Logf
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Server serves tsidp's HTTP endpoints.
type Server struct {
	cfg Config
	// refusalLogf logs refused callers (401) for audit, rate limited so
	// that a caller hammering tsidp cannot flood the log.
	refusalLogf logger.Logf
	router      chi.Router
	discovery   []byte // both discovery documents: the same values
	identifier  *Identifier
	metrics     *serverMetrics

	readyMu    sync.Mutex
	readyState map[string]string // check name → last status seen, for logging changes
}

// maxHeaderBytes bounds a request's headers.
const maxHeaderBytes = 16 << 10

// New validates cfg and builds the server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Core == nil:
		return nil, errors.New("server: no issuance core")
	case cfg.Source == nil && cfg.Identifier == nil:
		return nil, errors.New("server: no identity source")
	case cfg.Signer == nil:
		return nil, errors.New("server: no signer")
	}
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, metrics: newServerMetrics(), identifier: cfg.Identifier,
		refusalLogf: logger.RateLimitedFn(cfg.Logf, time.Minute, 30, 100)}
	if s.identifier == nil {
		s.identifier = NewIdentifier(cfg.Source, cfg.IdentityCacheTTL, cfg.Now)
	}
	var err error
	if s.discovery, err = s.metadata(); err != nil {
		return nil, err
	}
	s.router = s.routes()
	return s, nil
}

// routes builds the router. Every GET endpoint also answers HEAD, and a
// 405 names the path's methods in Allow (RFC 9110 §15.5.6).
func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(securityHeaders)
	allowed := map[string]string{}
	route := func(path string, h http.HandlerFunc, methods ...string) {
		for _, m := range methods {
			r.Method(m, path, h)
		}
		allowed[path] = strings.Join(methods, ", ")
	}
	route("/.well-known/openid-configuration", s.serveStatic(s.discovery), http.MethodGet, http.MethodHead)
	route("/.well-known/oauth-authorization-server", s.serveStatic(s.discovery), http.MethodGet, http.MethodHead)
	route("/.well-known/jwks.json", s.serveJWKS, http.MethodGet, http.MethodHead)
	route("/token", s.serveToken, http.MethodPost)
	if p := s.cfg.Provider; p != nil {
		route("/authorize", p.ServeAuthorize, http.MethodGet, http.MethodPost)
		route("/authorize/confirm", p.ServeConfirm, http.MethodPost)
		route("/userinfo", p.ServeUserInfo, http.MethodGet, http.MethodPost)
		route("/logout", p.ServeEndSession, http.MethodGet, http.MethodPost)
	}
	route("/healthz", s.serveHealthz, http.MethodGet, http.MethodHead)
	route("/readyz", s.serveReadyz, http.MethodGet, http.MethodHead)
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		if a := allowed[r.URL.Path]; a != "" {
			w.Header().Set("Allow", a)
		}
		oauthhttp.WriteError(w, http.StatusMethodNotAllowed, "invalid_request", "method "+r.Method+" is not allowed here")
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		oauthhttp.WriteError(w, http.StatusNotFound, "invalid_request", "no such endpoint")
	})
	return r
}

// Handler returns the routed handler. Behind it, identity falls back to
// r.RemoteAddr when the connection was not accepted by NewHTTPServer's server.
func (s *Server) Handler() http.Handler { return s.router }

// Metrics returns the server's counters for the metrics listener.
func (s *Server) Metrics() expvar.Var { return s.metrics.root }

// NewHTTPServer returns an http.Server for s with tsidp's timeouts and
// size limits, and with per-connection identity caching wired in.
func (s *Server) NewHTTPServer() *http.Server {
	return httpsrv.New(s.router, httpsrv.Options{MaxHeaderBytes: maxHeaderBytes, ConnContext: connContext})
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}
