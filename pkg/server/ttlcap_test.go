package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/claims"
)

// capEnricher caps the token lifetime at max.
type capEnricher struct{ max time.Duration }

func (capEnricher) Name() string { return "capper" }
func (c capEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	return &claims.Result{MaxTTL: c.max}, nil
}

// TestEnricherCapBelowMinimum: an enricher (tailnet grants or a plugin) that
// caps the lifetime below audience.MinTTL gets the request refused with 403
// access_denied and no token. It used to yield a token with exp == iat.
func TestEnricherCapBelowMinimum(t *testing.T) {
	tests := []struct {
		cap     time.Duration
		code    int
		expires float64 // expires_in of a successful answer
	}{
		{0, 200, 3600}, // no cap: the audience's default
		{time.Minute, 200, 60},
		{10 * time.Second, 200, 10},
		{9 * time.Second, 403, 0},
		{500 * time.Millisecond, 403, 0},
		{time.Nanosecond, 403, 0},
	}
	src := &staticSource{id: alice}
	for _, tt := range tests {
		var logs []string
		s := newTestServer(t, src, capEnricher{tt.cap})
		s.refusalLogf = func(f string, a ...any) { logs = append(logs, f) }
		code, m := postAudience(s, "api")
		if code != tt.code {
			t.Errorf("cap %v: %d %v, want %d", tt.cap, code, m, tt.code)
			continue
		}
		if tt.code == 200 {
			if m["expires_in"] != tt.expires {
				t.Errorf("cap %v: expires_in %v, want %v", tt.cap, m["expires_in"], tt.expires)
			}
			continue
		}
		desc, _ := m["error_description"].(string)
		if m["error"] != "access_denied" || !strings.Contains(desc, "capped below the minimum of 10s") || m["access_token"] != nil {
			t.Errorf("cap %v: answer %v; want access_denied saying the lifetime was capped below the minimum", tt.cap, m)
		}
		if len(logs) != 1 {
			t.Errorf("cap %v: refusal logged %d times, want once", tt.cap, len(logs))
		}
	}
}
