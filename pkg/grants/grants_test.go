package grants

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/identity"
)

// These tests feed capability values as tailscaled reports them in WhoIs;
// the same values set through a real test control server are covered by
// integration/claims_test.go.

const capName = "example.com/cap/tsidp"

func enrich(t *testing.T, aud string, rules ...string) (*claims.Result, []string) {
	t.Helper()
	var logs []string
	e := New(capName, func(f string, a ...any) { logs = append(logs, f) })
	var raw []tailcfg.RawMessage
	for _, r := range rules {
		raw = append(raw, tailcfg.RawMessage(r))
	}
	id := &identity.Identity{Subject: "user:1", Caps: tailcfg.PeerCapMap{capName: raw, "other/cap": {`{"claims":{"x":1}}`}}}
	res, err := e.Enrich(context.Background(), &claims.Request{Identity: id, Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	return res, logs
}

func claimMap(res *claims.Result) map[string]string {
	m := map[string]string{}
	for _, c := range res.Claims {
		m[c.Name] = string(c.Value)
	}
	return m
}

func TestNoCapabilityNoResult(t *testing.T) {
	e := New(capName, nil)
	res, err := e.Enrich(context.Background(), &claims.Request{Identity: &identity.Identity{}, Audience: "a"})
	if res != nil || err != nil {
		t.Errorf("no capability: %v %v", res, err)
	}
}

func TestAudienceScoping(t *testing.T) {
	res, _ := enrich(t, "api", `{"audiences":["api"],"claims":{"role":"admin"}}`, `{"audiences":["other"],"claims":{"role":"x"}}`, `{"claims":{"team":"blue"}}`)
	if len(res.Audiences) != 1 || res.Audiences[0] != "api" {
		t.Errorf("granted audiences = %v", res.Audiences)
	}
	if m := claimMap(res); m["role"] != `"admin"` || m["team"] != `"blue"` || len(m) != 2 {
		t.Errorf("claims = %v", m)
	}
	// A rule without audiences adds claims but grants no audience.
	res, _ = enrich(t, "web", `{"claims":{"team":"blue"}}`)
	if len(res.Audiences) != 0 || claimMap(res)["team"] != `"blue"` {
		t.Errorf("claims-only rule: %+v", res)
	}
}

func TestMaxTTLTakesTheSmallest(t *testing.T) {
	res, logs := enrich(t, "api", `{"max_ttl":"1h"}`, `{"max_ttl":"5m"}`, `{"max_ttl":"forever"}`)
	if res.MaxTTL != 5*time.Minute {
		t.Errorf("MaxTTL = %v", res.MaxTTL)
	}
	if len(logs) != 1 {
		t.Errorf("bad max_ttl not logged once: %v", logs)
	}
}

func TestReservedAndMalformedRefused(t *testing.T) {
	res, logs := enrich(t, "api",
		`{"claims":{"sub":"user:0","email":"evil@example.com","groups":["eng"]}}`,
		`{"claims":{"x":1},"unknown_field":true}`,
		`not json`)
	m := claimMap(res)
	if _, ok := m["sub"]; ok {
		t.Error("grant set sub")
	}
	if _, ok := m["email"]; ok {
		t.Error("grant set email")
	}
	if m["groups"] != `["eng"]` || len(m) != 1 {
		t.Errorf("claims = %v", m)
	}
	if len(logs) != 4 { // two reserved claims, two malformed rules
		t.Errorf("logs = %v", logs)
	}
}

func TestDeterministicMerge(t *testing.T) {
	a := `{"claims":{"groups":["a"],"level":"1"}}`
	b := `{"claims":{"groups":["b"],"level":"2"}}`
	r1, _ := enrich(t, "api", a, b)
	r2, _ := enrich(t, "api", b, a)
	j1, _ := json.Marshal(r1.Claims)
	j2, _ := json.Marshal(r2.Claims)
	if string(j1) != string(j2) {
		t.Errorf("order of capability values changes the result:\n%s\n%s", j1, j2)
	}
	if m := claimMap(r1); m["groups"] != `["a","b"]` || !strings.Contains(m["level"], "2") {
		t.Errorf("merged = %v", m)
	}
}
