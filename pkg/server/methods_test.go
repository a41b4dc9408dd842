package server

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

// TestMethods: every GET endpoint answers HEAD too, with GET's status and
// headers and no body; a method a path does not support gets 405 with an
// Allow header listing the ones it does (RFC 9110 §15.5.6).
func TestMethods(t *testing.T) {
	base := serveReal(t, newTestServer(t, &staticSource{id: alice}))
	tests := []struct {
		method, path string
		code         int
		allow        string // Allow header; "" for none
		header       string // a header the answer must carry
	}{
		{"GET", "/.well-known/openid-configuration", 200, "", "Cache-Control"},
		{"HEAD", "/.well-known/openid-configuration", 200, "", "Cache-Control"},
		{"HEAD", "/.well-known/oauth-authorization-server", 200, "", "Content-Type"},
		{"HEAD", "/.well-known/jwks.json", 200, "", "ETag"},
		{"HEAD", "/healthz", 200, "", "Content-Type"},
		{"HEAD", "/readyz", 200, "", "Content-Type"},
		{"GET", "/token", 405, "POST", ""},
		{"HEAD", "/token", 405, "POST", ""},
		{"PUT", "/token", 405, "POST", ""},
		{"POST", "/.well-known/openid-configuration", 405, "GET, HEAD", ""},
		{"DELETE", "/.well-known/jwks.json", 405, "GET, HEAD", ""},
		{"POST", "/healthz", 405, "GET, HEAD", ""},
		{"PUT", "/readyz", 405, "GET, HEAD", ""},
		{"GET", "/nope", 404, "", ""},
		{"HEAD", "/nope", 404, "", ""},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, base+tt.path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tt.code {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, res.StatusCode, tt.code)
		}
		if got := res.Header.Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow = %q, want %q", tt.method, tt.path, got, tt.allow)
		}
		if tt.header != "" && res.Header.Get(tt.header) == "" {
			t.Errorf("%s %s: no %s header", tt.method, tt.path, tt.header)
		}
		if tt.method == "HEAD" && len(body) != 0 {
			t.Errorf("HEAD %s: body %q", tt.path, body)
		}
		if tt.code == 405 {
			var e map[string]string
			if tt.method != "HEAD" && (json.Unmarshal(body, &e) != nil || e["error"] != "invalid_request") {
				t.Errorf("%s %s: body %q, want an RFC 6749 error", tt.method, tt.path, body)
			}
		}
	}
}
