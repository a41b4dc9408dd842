package server

import (
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/audience"
)

// TestIssuerUsedAsGiven: New refuses an issuer it would have to alter to
// serve (a trailing slash used to be trimmed silently, so "iss" differed
// from the configured string and exact-match verifiers such as go-oidc
// failed), and one with a path, which the root-mounted routes cannot serve.
func TestIssuerUsedAsGiven(t *testing.T) {
	pol, err := audience.NewRegistry([]audience.Config{{Name: "api", Allow: []string{"*"}}},
		audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	signer := testManager(t)
	tests := []struct {
		issuer string
		ok     bool
	}{
		{"https://idp.example", true},
		{"http://127.0.0.1:8080", true},
		{"", false},
		{"https://idp.example/", false},
		{"https://idp.example/tsidp", false},
		{"https://idp.example?x=1", false},
		{"https://idp.example#f", false},
		{"idp.example", false},
		{"ftp://idp.example", false},
	}
	for _, tt := range tests {
		s, err := New(Config{Issuer: tt.issuer, Source: &staticSource{id: alice}, Signer: signer, Policy: pol})
		if (err == nil) != tt.ok {
			t.Errorf("New(issuer %q): err = %v, want ok = %v", tt.issuer, err, tt.ok)
			continue
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "server: ") {
				t.Errorf("New(issuer %q): error %q lacks the component prefix", tt.issuer, err)
			}
			continue
		}
		if !strings.Contains(string(s.discovery), `"issuer": "`+tt.issuer+`"`) {
			t.Errorf("issuer %q: discovery says %s", tt.issuer, s.discovery)
		}
	}
}
