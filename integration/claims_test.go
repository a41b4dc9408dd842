package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"tailscale.com/tailcfg"

	"github.com/tsidp/tsidp/pkg/admin"
	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/sandbox"
)

// buildPlugin builds a Go plugin under plugins/ and returns its path and
// SHA-256.
func buildPlugin(t *testing.T, name string) (path, sum string) {
	t.Helper()
	path = filepath.Join(shortTempDir(t), name)
	out, err := exec.Command("go", "build", "-o", path, "../plugins/"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("building plugin %s: %v\n%s", name, err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return path, hex.EncodeToString(h[:])
}

const grantCap = "tsidp.example/cap/tsidp"

// TestPluginAndGrantClaimsInVerifiedTokens runs the sandbox with the real
// groups-file plugin process and tailnet grants set in test control, and
// checks what lands in tokens verified against the JWKS.
func TestPluginAndGrantClaimsInVerifiedTokens(t *testing.T) {
	pluginPath, sum := buildPlugin(t, "groups-file")
	groups := filepath.Join(shortTempDir(t), "groups.yaml")
	os.WriteFile(groups, []byte("groups:\n  eng: ['*@fake-control.example.net']\n  ci: ['"+sandbox.Tag+"']\n"), 0o600)

	cfg := &config.Config{
		Grants: config.GrantsConfig{Capability: grantCap},
		Plugins: []plugin.Config{{
			Name: "groups", Path: pluginPath, SHA256: sum,
			Config: map[string]any{"file": groups, "cache_ttl": "1s"},
		}},
		Audiences: []audience.Config{
			{Name: "eng-api", Allow: []string{"group:eng"}},
			{Name: "ci-api", Allow: []string{"group:ci"}},
			// Nobody matches this rule: only a tailnet grant opens it.
			{Name: "granted-api", Allow: []string{"user:nobody@example.com"}},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb, err := sandbox.Start(ctx, sandbox.Options{Listen: freeAddr(t), ListenTagged: freeAddr(t), StateDir: shortTempDir(t), Config: cfg, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	hc := httpClient()
	iss := sb.Issuer()

	token := func(base, aud string) (int, tokenAnswer) {
		status, ta, _ := postToken(t, hc, base, url.Values{"audience": {aud}})
		return status, ta
	}

	// Groups from the plugin decide group: rules and reach the token.
	status, ta := token(sb.Gateway.URL(), "eng-api")
	if status != 200 {
		t.Fatalf("person on eng-api: %d %+v", status, ta)
	}
	c := verifyGoJose(t, hc, iss, ta.AccessToken, "ES256", "eng-api")
	if fmt.Sprint(c["groups"]) != "[eng]" {
		t.Errorf("person's groups = %v, want [eng]", c["groups"])
	}
	if status, ta := token(sb.TaggedGW.URL(), "eng-api"); status != 403 || ta.Error != "access_denied" {
		t.Errorf("tagged device on eng-api: %d %+v", status, ta)
	}
	status, ta = token(sb.TaggedGW.URL(), "ci-api")
	if status != 200 {
		t.Fatalf("tagged device on ci-api: %d %+v", status, ta)
	}
	if c := verifyGoJose(t, hc, iss, ta.AccessToken, "ES256", "ci-api"); fmt.Sprint(c["groups"]) != "[ci]" {
		t.Errorf("tagged groups = %v", c["groups"])
	}

	// Without a grant, granted-api is closed.
	if status, _ := token(sb.Gateway.URL(), "granted-api"); status != 403 {
		t.Fatalf("granted-api before the grant: %d", status)
	}
	// A grant in the tailnet policy opens it, adds claims, caps the TTL;
	// it cannot set a reserved claim.
	rule := `{"audiences":["granted-api"],"claims":{"team":"blue","groups":["grant-group"],"sub":"user:0"},"max_ttl":"5m"}`
	sb.Control.Server().SetGlobalAppCaps(tailcfg.PeerCapMap{grantCap: {tailcfg.RawMessage(rule)}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, ta = token(sb.Gateway.URL(), "granted-api")
		if status == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if status != 200 || ta.ExpiresIn != 300 {
		t.Fatalf("granted-api with the grant: %d %+v (want 200, expires_in 300)", status, ta)
	}
	c = verifyGoJose(t, hc, iss, ta.AccessToken, "ES256", "granted-api")
	if c["team"] != "blue" || c["sub"] == "user:0" {
		t.Errorf("grant claims: %v", c)
	}
	// Grants merge first, then plugins: arrays are united in that order.
	if got, _ := json.Marshal(c["groups"]); string(got) != `["grant-group","eng"]` {
		t.Errorf("merged groups = %s, want [\"grant-group\",\"eng\"]", got)
	}

	// Plugin health shows in /readyz.
	res, err := hc.Get(iss + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var ready struct {
		Checks []struct {
			Name   string
			Status string
		}
	}
	json.NewDecoder(res.Body).Decode(&ready)
	res.Body.Close()
	found := false
	for _, ch := range ready.Checks {
		if ch.Name == "plugins" && ch.Status == "ok" {
			found = true
		}
	}
	if res.StatusCode != 200 || !found {
		t.Errorf("/readyz = %d %+v, want the plugins check ok", res.StatusCode, ready)
	}

	// And in the admin API's status, which `tsidp keys list` also reads.
	st, err := admin.NewClient(sb.AdminSocket).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var health []struct {
		Name, State string
	}
	if err := json.Unmarshal(st.Plugins, &health); err != nil || len(health) != 1 || health[0].Name != "groups" || health[0].State == "" {
		t.Errorf("admin status plugins = %s (%v)", st.Plugins, err)
	}
}
