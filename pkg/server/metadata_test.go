package server

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
)

// TestMetadataFields: the OAuth metadata does not advertise signing
// algorithms for token endpoint authentication, since the only method is
// "none"; discovery still lists the ID token signing algorithms.
func TestMetadataFields(t *testing.T) {
	s := newTestServer(t, &staticSource{id: alice})
	tests := []struct {
		path    string
		present []string
		absent  []string
	}{
		{"/.well-known/oauth-authorization-server",
			[]string{"issuer", "token_endpoint", "jwks_uri", "token_endpoint_auth_methods_supported"},
			[]string{"token_endpoint_auth_signing_alg_values_supported"}},
		{"/.well-known/openid-configuration",
			[]string{"issuer", "token_endpoint", "jwks_uri", "token_endpoint_auth_methods_supported", "id_token_signing_alg_values_supported"},
			[]string{"token_endpoint_auth_signing_alg_values_supported"}},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", tt.path, nil))
		var m map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v", tt.path, err)
		}
		for _, k := range tt.present {
			if _, ok := m[k]; !ok {
				t.Errorf("%s lacks %s", tt.path, k)
			}
		}
		for _, k := range tt.absent {
			if _, ok := m[k]; ok {
				t.Errorf("%s has %s", tt.path, k)
			}
		}
		if got, _ := json.Marshal(m["token_endpoint_auth_methods_supported"]); string(got) != `["none"]` {
			t.Errorf("%s: token_endpoint_auth_methods_supported = %s", tt.path, got)
		}
	}
}
