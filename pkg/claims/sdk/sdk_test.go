package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/claims/sdk"
	"github.com/tsidp/tsidp/pkg/claims/sdk/sdktest"
	"github.com/tsidp/tsidp/pkg/identity"
)

// funcPlugin is a Plugin built from functions.
type funcPlugin struct {
	desc      sdk.Description
	configure func(json.RawMessage) error
	enrich    func(context.Context, *sdk.Request) (*sdk.Response, error)
}

func (f *funcPlugin) Describe() sdk.Description { return f.desc }
func (f *funcPlugin) Configure(_ context.Context, c json.RawMessage) error {
	if f.configure == nil {
		return nil
	}
	return f.configure(c)
}
func (f *funcPlugin) Enrich(ctx context.Context, r *sdk.Request) (*sdk.Response, error) {
	return f.enrich(ctx, r)
}

// TestRequestReachesPlugin shows every identity field crossing the
// protocol intact.
func TestRequestReachesPlugin(t *testing.T) {
	var got *sdk.Request
	p := sdktest.Start(t, &funcPlugin{
		desc: sdk.Description{Name: "echo", Claims: []string{"ok"}},
		enrich: func(_ context.Context, r *sdk.Request) (*sdk.Response, error) {
			got = r
			return sdk.Allow(map[string]any{"ok": true}), nil
		},
	}, nil)
	id := &identity.Identity{
		Subject: "user:7", UserID: "7", LoginName: "alice@example.com", DisplayName: "Alice",
		ProfilePicURL: "https://example.com/a.png", NodeName: "laptop.example.ts.net", NodeID: "nL",
		Tailnet: "example.ts.net", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.7/32")},
		Tags: []string{"tag:a"}, Tagged: true, Sharee: true,
		Caps: tailcfg.PeerCapMap{"example.com/cap/tsidp": {`{"groups":["x"]}`}},
	}
	res, err := p.Enrich(context.Background(), sdktest.Request(id, "aud", "s1", "s2"))
	if err != nil || sdktest.Claim(res, "ok") != "true" {
		t.Fatalf("Enrich = %+v, %v", res, err)
	}
	want := sdk.Identity{
		Subject: "user:7", UserID: "7", LoginName: "alice@example.com", DisplayName: "Alice",
		ProfilePicURL: "https://example.com/a.png", NodeName: "laptop.example.ts.net", NodeID: "nL",
		Tailnet: "example.ts.net", Addresses: id.Addresses, Tags: []string{"tag:a"}, Tagged: true, Sharee: true,
		Caps: map[string][]json.RawMessage{"example.com/cap/tsidp": {json.RawMessage(`{"groups":["x"]}`)}},
	}
	gj, _ := json.Marshal(got.Identity)
	wj, _ := json.Marshal(want)
	if string(gj) != string(wj) {
		t.Errorf("identity:\n got %s\nwant %s", gj, wj)
	}
	if got.Audience != "aud" || strings.Join(got.Scopes, ",") != "s1,s2" || got.Identity.HostName() != "laptop" {
		t.Errorf("request = %+v", got)
	}
}

func TestResponses(t *testing.T) {
	p := sdktest.Start(t, &funcPlugin{
		desc: sdk.Description{Name: "r", Claims: []string{"groups", "raw", "level"}},
		enrich: func(_ context.Context, r *sdk.Request) (*sdk.Response, error) {
			switch r.Audience {
			case "deny":
				return sdk.Deny("no"), nil
			case "nil":
				return nil, nil
			case "ttl":
				return &sdk.Response{Claims: map[string]any{"level": 3}, MaxTTL: 90 * time.Second, CacheTTL: time.Second}, nil
			case "bad":
				return sdk.Allow(map[string]any{"groups": func() {}}), nil
			case "err":
				return nil, errors.New("directory unreachable")
			case "status":
				return nil, status.Error(codes.PermissionDenied, "bind refused")
			}
			return sdk.Allow(map[string]any{"groups": []string{"b", "a"}, "raw": json.RawMessage(`{"k":1}`)}), nil
		},
	}, nil)
	ctx := context.Background()
	id := sdktest.Person("alice@example.com")

	res, err := p.Enrich(ctx, sdktest.Request(id, "ok"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Claims) != 2 || res.Claims[0].Name != "groups" || string(res.Claims[0].Value) != `["b","a"]` ||
		string(res.Claims[1].Value) != `{"k":1}` {
		t.Errorf("claims = %v", res.Claims)
	}
	if res, _ := p.Enrich(ctx, sdktest.Request(id, "deny")); !res.Deny || res.Reason != "no" {
		t.Errorf("deny = %+v", res)
	}
	if res, err := p.Enrich(ctx, sdktest.Request(id, "nil")); err != nil || res.Deny || len(res.Claims) != 0 {
		t.Errorf("nil response = %+v, %v", res, err)
	}
	if res, _ := p.Enrich(ctx, sdktest.Request(id, "ttl")); res.MaxTTL != 90*time.Second || sdktest.Claim(res, "level") != "3" {
		t.Errorf("ttl = %+v", res)
	}
	for aud, want := range map[string]string{
		"bad":    `code = Internal desc = claim "groups": json: unsupported type`,
		"err":    "code = Unknown desc = directory unreachable",
		"status": "code = PermissionDenied desc = bind refused",
	} {
		_, err := p.Enrich(ctx, sdktest.Request(id, aud))
		if !errors.Is(err, plugin.ErrUnavailable) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrUnavailable and %q", aud, err, want)
		}
	}
}

func TestConfigure(t *testing.T) {
	var got string
	sdktest.Start(t, &funcPlugin{
		desc:      sdk.Description{Name: "c"},
		configure: func(c json.RawMessage) error { got = string(c); return nil },
	}, map[string]any{"url": "ldap://x", "n": 2})
	if got != `{"n":2,"url":"ldap://x"}` {
		t.Errorf("config = %s", got)
	}
	sdktest.Start(t, &funcPlugin{
		desc:      sdk.Description{Name: "c"},
		configure: func(c json.RawMessage) error { got = string(c); return nil },
	}, nil)
	if got != `{}` {
		t.Errorf("absent config = %s, want {}", got)
	}

	// A refused configuration keeps the plugin from starting.
	m, err := plugin.New([]plugin.Config{{Builtin: "c"}}, plugin.Options{Builtins: map[string]plugin.Register{
		"c": func(s grpc.ServiceRegistrar) {
			sdk.RegisterServer(s, &funcPlugin{configure: func(json.RawMessage) error { return errors.New("file is required") }})
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "file is required") {
		t.Errorf("Start = %v", err)
	}
}

// TestUndeclaredClaimRefused shows that sdktest applies tsidp's checks.
func TestUndeclaredClaimRefused(t *testing.T) {
	p := sdktest.Start(t, &funcPlugin{
		desc: sdk.Description{Name: "u", Claims: []string{"groups"}},
		enrich: func(context.Context, *sdk.Request) (*sdk.Response, error) {
			return sdk.Allow(map[string]any{"groups": []string{"a"}, "role": "admin"}), nil
		},
	}, nil)
	res, err := p.Enrich(context.Background(), sdktest.Request(sdktest.Tagged("ci", "tag:ci"), "a"))
	if err != nil || sdktest.Claim(res, "role") != "" || sdktest.Claim(res, "groups") != `["a"]` {
		t.Errorf("Enrich = %+v, %v", res, err)
	}
	var _ claims.Enricher = p
}
