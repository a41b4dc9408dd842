package grants

import (
	"context"
	"encoding/json"
	"fmt"
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

// TestBadMaxTTLRefusesRule: a rule whose max_ttl is not a duration of at
// least audience.MinTTL is refused whole and logged, like a malformed rule. A
// cap below the minimum used to pass through and yield tokens with exp ==
// iat; and a rule whose cap is ignored must not still open its audiences.
func TestBadMaxTTLRefusesRule(t *testing.T) {
	tests := []struct {
		maxTTL string
		ok     bool
	}{
		{"10s", true},
		{"1h", true},
		{"9s", false},
		{"500ms", false},
		{"0s", false},
		{"-1m", false},
		{"forever", false},
	}
	for _, tt := range tests {
		rule := `{"audiences":["api"],"claims":{"role":"admin"},"max_ttl":"` + tt.maxTTL + `"}`
		res, logs := enrich(t, "api", rule, `{"claims":{"team":"blue"}}`)
		m := claimMap(res)
		if tt.ok {
			if len(res.Audiences) != 1 || m["role"] != `"admin"` || res.MaxTTL != mustDuration(t, tt.maxTTL) || len(logs) != 0 {
				t.Errorf("max_ttl %q: result %+v, logs %v; want the rule applied", tt.maxTTL, res, logs)
			}
			continue
		}
		if len(res.Audiences) != 0 || m["role"] != "" || res.MaxTTL != 0 {
			t.Errorf("max_ttl %q: audiences %v, claims %v, MaxTTL %v; want the rule refused whole", tt.maxTTL, res.Audiences, m, res.MaxTTL)
		}
		if m["team"] != `"blue"` {
			t.Errorf("max_ttl %q: the other rule was not applied: %v", tt.maxTTL, m)
		}
		if len(logs) != 1 || !strings.Contains(logs[0], "ignoring rule") {
			t.Errorf("max_ttl %q: logs = %v, want one line about the ignored rule", tt.maxTTL, logs)
		}
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
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

// TestLogsAreBounded: a malformed rule is logged on the first requests,
// not on every one (it is in the policy file until someone fixes it).
func TestLogsAreBounded(t *testing.T) {
	var logs []string
	e := New(capName, func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	id := &identity.Identity{Subject: "user:1", Caps: tailcfg.PeerCapMap{capName: {`{"audience":["api"]}`}}}
	for range 1000 {
		if _, err := e.Enrich(context.Background(), &claims.Request{Identity: id, Audience: "api"}); err != nil {
			t.Fatal(err)
		}
	}
	if len(logs) == 0 || len(logs) > 12 || !strings.Contains(logs[0], "ignoring malformed rule") {
		t.Errorf("1000 requests with a malformed rule logged %d lines, want a handful:\n%s", len(logs), strings.Join(logs, "\n"))
	}
}
