package server

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"

	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/grants"
	"github.com/tsidp/tsidp/pkg/identity"
)

// countingEnricher stands in for a plugin doing a directory lookup: it
// counts the callers it is asked about, and may claim audiences (which
// only tailnet grants may grant).
type countingEnricher struct {
	calls     atomic.Int64
	groups    string
	audiences []string
}

func (*countingEnricher) Name() string { return "directory" }
func (c *countingEnricher) Enrich(context.Context, *claims.Request) (*claims.Result, error) {
	c.calls.Add(1)
	res := &claims.Result{Audiences: c.audiences}
	if c.groups != "" {
		res.Claims = []claims.Claim{{Name: "groups", Value: json.RawMessage(c.groups)}}
	}
	return res, nil
}

// TestRefusedBeforePlugins: a caller no allow rule admits, for an audience
// whose rules do not use groups, is refused without asking plugins (they
// could not change the answer), so a plugin neither sees nor looks up such
// callers, and one that is down does not turn the 403 into a 503. Tailnet
// grants are still asked, since they can open the audience.
func TestRefusedBeforePlugins(t *testing.T) {
	const capName = "example.com/cap/tsidp"
	bob := func(rules ...string) *identity.Identity {
		id := &identity.Identity{Subject: "user:2", UserID: "2", LoginName: "bob@other.example",
			NodeName: "pc.tail1.ts.net", NodeID: "nB", Tailnet: "tail1.ts.net"}
		if len(rules) > 0 {
			var raw []tailcfg.RawMessage
			for _, r := range rules {
				raw = append(raw, tailcfg.RawMessage(r))
			}
			id.Caps = tailcfg.PeerCapMap{capName: raw}
		}
		return id
	}
	post := func(id *identity.Identity, aud string, enrichers ...claims.Enricher) (int, map[string]any) {
		return postAudience(newTestServer(t, &staticSource{id: id}, enrichers...), aud)
	}
	g := grants.New(capName, t.Logf)

	// "api" admits *@example.com only.
	dir := &countingEnricher{}
	if code, m := post(bob(), "api", g, dir); code != 403 || m["error"] != "access_denied" || dir.calls.Load() != 0 {
		t.Errorf("refused caller: %d %v, plugin asked %d times; want 403 without asking it", code, m, dir.calls.Load())
	}
	if code, m := post(bob(), "api", g, failingEnricher{}); code != 403 {
		t.Errorf("refused caller with a plugin down: %d %v; want 403, not 503", code, m)
	}
	// A plugin cannot open an audience, only tailnet grants can.
	opener := &countingEnricher{audiences: []string{"api"}}
	if code, m := post(bob(), "api", opener); code != 403 {
		t.Errorf("a plugin claiming the audience opened it: %d %v", code, m)
	}
	// A grant opens it: then plugins are asked, and their claims arrive.
	dir = &countingEnricher{groups: `["ops"]`}
	code, m := post(bob(`{"audiences":["api"]}`), "api", g, dir)
	if code != 200 || dir.calls.Load() != 1 {
		t.Fatalf("granted caller: %d %v, plugin asked %d times", code, m, dir.calls.Load())
	}
	if c := verify(t, m["access_token"].(string), "ES256"); c["sub"] != "user:2" || c["groups"] == nil {
		t.Errorf("granted caller's claims = %v", c)
	}
	// Rules that use groups need the plugins' answer: they are asked.
	dir = &countingEnricher{groups: `["eng"]`}
	if code, m := post(bob(), "eng", g, dir); code != 200 || dir.calls.Load() != 1 {
		t.Errorf("group rule: %d %v, plugin asked %d times", code, m, dir.calls.Load())
	}
}
