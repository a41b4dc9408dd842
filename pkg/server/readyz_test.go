package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/policy"
)

// TestReadyzDegraded: a failing check marked Degrades keeps /readyz at 200
// with status "degraded" (tokens are still issued); a failing ordinary check
// still answers 503, whatever degraded checks say.
func TestReadyzDegraded(t *testing.T) {
	src := &staticSource{id: alice}
	var storeDown, pluginsDown atomic.Bool
	pol, err := policy.New([]policy.AudienceConfig{{Name: "api", Allow: []string{"*"}}},
		policy.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Issuer: "https://idp.example", Source: src, Signer: testManager(t), Policy: pol,
		Algorithms: []string{"ES256"}, JWKSMaxAge: time.Hour,
		Ready: []Check{
			{Name: "store", Degrades: true, Check: func(context.Context) error {
				if storeDown.Load() {
					return errors.New("etcdstore: etcd unreachable")
				}
				return nil
			}},
			{Name: "plugins", Check: func(context.Context) error {
				if pluginsDown.Load() {
					return errors.New("plugin ldap: not serving")
				}
				return nil
			}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		Status string `json:"status"`
		Checks []struct {
			Name  string `json:"name"`
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		} `json:"checks"`
	}
	readyz := func() (int, answer) {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		var a answer
		if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
			t.Fatalf("readyz body %q: %v", rec.Body, err)
		}
		return rec.Code, a
	}
	if code, a := readyz(); code != 200 || a.Status != "ready" {
		t.Errorf("all well: %d %+v", code, a)
	}
	storeDown.Store(true)
	code, a := readyz()
	if code != 200 || a.Status != "degraded" {
		t.Errorf("store down: %d %+v; want 200 degraded", code, a)
	}
	for _, c := range a.Checks {
		if c.Name == "store" && (c.OK || !strings.Contains(c.Error, "unreachable")) {
			t.Errorf("store check = %+v", c)
		}
	}
	// Tokens are still issued while degraded.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/token", strings.NewReader(url.Values{"audience": {"api"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("token while degraded: %d %s", rec.Code, rec.Body)
	}
	pluginsDown.Store(true)
	if code, a := readyz(); code != 503 || a.Status != "not ready" {
		t.Errorf("store and plugins down: %d %+v; want 503", code, a)
	}
	storeDown.Store(false)
	if code, a := readyz(); code != 503 || a.Status != "not ready" {
		t.Errorf("plugins down: %d %+v; want 503", code, a)
	}
}
