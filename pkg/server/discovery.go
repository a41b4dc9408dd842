package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// metadata returns the OpenID Connect discovery document and the RFC 8414
// authorization server metadata. They hold the same values: relying
// parties read one or the other, and must not see two providers.
func (s *Server) metadata() ([]byte, error) {
	iss := s.cfg.Core.Issuer()
	algs := s.cfg.Algorithms
	if algs == nil {
		algs = []string{}
	}
	m := map[string]any{
		"issuer":                                iss,
		"jwks_uri":                              iss + "/.well-known/jwks.json",
		"token_endpoint":                        iss + "/token",
		"grant_types_supported":                 []string{"client_credentials"},
		"token_endpoint_auth_methods_supported": []string{"none"},
		"response_types_supported":              []string{},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": algs,
		"claims_supported": []string{
			"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope",
			"user_id", "login_name", "preferred_username", "email", "name", "picture",
			"tailnet", "node", "node_id", "tagged", "tags",
		},
	}
	if p := s.cfg.Provider; p != nil {
		for k, v := range p.Metadata() {
			switch old := m[k].(type) {
			case []string:
				m[k] = union(old, v.([]string))
			default:
				m[k] = v
			}
		}
	}
	var scopes []string
	if p := s.cfg.Provider; p != nil {
		scopes = m["scopes_supported"].([]string)
	}
	reg := s.cfg.Core.Audiences()
	for _, name := range reg.Names() {
		scopes = union(scopes, reg.Audience(name).Scopes)
	}
	if len(scopes) > 0 {
		m["scopes_supported"] = scopes
	}
	// No token_endpoint_auth_signing_alg_values_supported: it describes
	// private_key_jwt and client_secret_jwt client authentication, which
	// tsidp does not offer.
	return json.MarshalIndent(m, "", "  ")
}

// union returns a followed by the elements of b it lacks.
func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		if !contains(out, x) {
			out = append(out, x)
		}
	}
	return out
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
		h.Set("Cache-Control", s.cacheControl())
		w.Write(body)
	}
}

func (s *Server) serveJWKS(w http.ResponseWriter, r *http.Request) {
	body, etag := s.cfg.Signer.JWKS()
	h := w.Header()
	h.Set("Cache-Control", s.cacheControl())
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

// cacheControl is the Cache-Control of discovery and JWKS: verifiers may
// cache them for the JWKS max-age, which key rotation is planned around.
func (s *Server) cacheControl() string {
	return fmt.Sprintf("public, max-age=%d", int(s.cfg.JWKSMaxAge.Seconds()))
}
