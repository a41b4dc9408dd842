package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/audience"
)

// TestReadyzDegraded: a failing check marked Degrades keeps /readyz at 200
// with status "degraded" (tokens are still issued); a failing ordinary check
// still answers 503, whatever degraded checks say.
func TestReadyzDegraded(t *testing.T) {
	src := &staticSource{id: alice}
	var storeDown, pluginsDown atomic.Bool
	pol, err := audience.NewRegistry([]audience.Config{{Name: "api", Allow: []string{"*"}}},
		audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	s := newServerWith(t, pol, src, Config{
		Algorithms: []string{"ES256"},
		Ready: []Check{
			{Name: "store", Degrades: true, Reason: "key store unreachable", Check: func(context.Context) error {
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
	type answer struct {
		Status string `json:"status"`
		Checks []struct {
			Name   string `json:"name"`
			Status string `json:"status"`
			Reason string `json:"reason"`
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
		if c.Name == "store" && (c.Status != "degraded" || c.Reason != "key store unreachable") {
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
	code, a = readyz()
	if code != 503 || a.Status != "not ready" {
		t.Errorf("store and plugins down: %d %+v; want 503", code, a)
	}
	for _, c := range a.Checks {
		if c.Name == "plugins" && (c.Status != "failing" || c.Reason != "check failed") {
			t.Errorf("plugins check without a reason = %+v; want failing, \"check failed\"", c)
		}
	}
	storeDown.Store(false)
	if code, a := readyz(); code != 503 || a.Status != "not ready" {
		t.Errorf("plugins down: %d %+v; want 503", code, a)
	}
}

// TestReadyzHidesDetail: /readyz, which anyone who can reach tsidp may ask,
// shows each check's status and fixed reason but never the error text
// (socket paths, etcd endpoints, plugin output). The error is logged when
// the check's status changes, once, not on every probe.
func TestReadyzHidesDetail(t *testing.T) {
	src := &staticSource{id: alice}
	var storeErr, pluginErr atomic.Pointer[error]
	errFrom := func(p *atomic.Pointer[error]) func(context.Context) error {
		return func(context.Context) error {
			if e := p.Load(); e != nil {
				return *e
			}
			return nil
		}
	}
	set := func(p *atomic.Pointer[error], err error) {
		if err == nil {
			p.Store(nil)
		} else {
			p.Store(&err)
		}
	}
	pol, err := audience.NewRegistry([]audience.Config{{Name: "api", Allow: []string{"*"}}},
		audience.Defaults{TTL: time.Hour, MaxTTL: 24 * time.Hour, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var logs []string
	s := newServerWith(t, pol, src, Config{
		Logf: func(f string, a ...any) { mu.Lock(); logs = append(logs, fmt.Sprintf(f, a...)); mu.Unlock() },
		Ready: []Check{
			{Name: "store", Degrades: true, Reason: "key store unreachable", Check: errFrom(&storeErr)},
			{Name: "plugins", Reason: "a required claims plugin is not serving", Check: errFrom(&pluginErr)},
		}})
	secrets := []string{"10.0.0.7:2379", "/run/tsidp/plugins/ldap.sock", "bind password rejected", "tailscaled.sock"}
	readyz := func() (int, string) {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		return rec.Code, rec.Body.String()
	}
	logged := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(logs)
	}

	set(&storeErr, errors.New("etcdstore: etcd at 10.0.0.7:2379 unreachable"))
	set(&pluginErr, errors.New("plugin ldap is restarting: dial unix /run/tsidp/plugins/ldap.sock: bind password rejected"))
	src.down.Store(true) // staticSource's error; LocalAPI's names tailscaled.sock
	tests := []struct {
		name         string
		code         int
		want         []string // in the body
		wantNewLines int      // log lines this probe adds
	}{
		{"all failing", 503, []string{
			`{"name":"identity","status":"failing","reason":"tailnet identity is unavailable (tailscaled not reachable or not Running)"}`,
			`{"name":"store","status":"degraded","reason":"key store unreachable"}`,
			`{"name":"plugins","status":"failing","reason":"a required claims plugin is not serving"}`,
			`"status":"not ready"`,
		}, 3},
		{"same again", 503, nil, 0},
	}
	for _, tt := range tests {
		before := len(logged())
		code, body := readyz()
		if code != tt.code {
			t.Errorf("%s: %d %s, want %d", tt.name, code, body, tt.code)
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: body %s lacks %s", tt.name, body, w)
			}
		}
		for _, sec := range secrets {
			if strings.Contains(body, sec) {
				t.Errorf("%s: body %s shows internal detail %q", tt.name, body, sec)
			}
		}
		if n := len(logged()) - before; n != tt.wantNewLines {
			t.Errorf("%s: %d new log lines, want %d: %q", tt.name, n, tt.wantNewLines, logged()[before:])
		}
	}
	all := strings.Join(logged(), "\n")
	for _, w := range []string{"readyz: check store is degraded: etcdstore: etcd at 10.0.0.7:2379 unreachable",
		"readyz: check plugins is failing: plugin ldap is restarting", "readyz: check identity is failing: "} {
		if !strings.Contains(all, w) {
			t.Errorf("log lacks %q:\n%s", w, all)
		}
	}

	// Recovery is logged once too.
	set(&storeErr, nil)
	set(&pluginErr, nil)
	src.down.Store(false)
	before := len(logged())
	if code, body := readyz(); code != 200 || !strings.Contains(body, `"status":"ready"`) || strings.Contains(body, "reason") {
		t.Errorf("recovered: %d %s", code, body)
	}
	readyz()
	if got := logged()[before:]; len(got) != 3 || !strings.Contains(strings.Join(got, "\n"), "readyz: check store is ok again (was degraded)") {
		t.Errorf("recovery logs = %q; want one line per check", got)
	}
}
