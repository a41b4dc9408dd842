package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

func (s *Server) metadata() (discovery, oauth []byte, err error) {
	iss := s.cfg.Core.Issuer()
	algs := s.cfg.Algorithms
	if algs == nil {
		algs = []string{}
	}
	var scopes []string
	reg := s.cfg.Core.Audiences()
	for _, name := range reg.Names() {
		for _, sc := range reg.Audience(name).Scopes {
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
