package integration

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/ipn"
	"tailscale.com/tsnet"

	"github.com/tsidp/tsidp/integration/harness"
	"github.com/tsidp/tsidp/pkg/tailnet"
)

// TestTailscaledBackend runs the built tsidp binary with "serve --backend
// tailscale" beside a real tailscaled and calls it over the tailnet from a
// person's node (tsnet) and a tagged device (a second real tailscaled).
func TestTailscaledBackend(t *testing.T) {
	needTailscaleBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rt := startRealTailnet(ctx, t)
	ci := rt.startTailscaled(ctx, t, "ci", "tag:ci")
	laptop, err := rt.control.StartNode(ctx, tailnet.NodeConfig{Hostname: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	srv := rt.startTSIDP(t, "--tailnet", realDomain)

	person := laptop.HTTPClient()
	tagged := ci.HTTPClient()
	local := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	aud := url.Values{"audience": {"https://es256.example"}}

	t.Run("person", func(t *testing.T) {
		want := personClaims(ctx, t, rt, laptop)
		for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
			r := requestToken(t, person, srv.tailnet, url.Values{"audience": {algAudience[alg]}}, nil)
			checkIssued(t, r, srv, alg, algAudience[alg], want)
		}
		// An audience for people only takes people.
		r := requestToken(t, person, srv.tailnet, url.Values{"audience": {"people-only"}}, nil)
		checkIssued(t, r, srv, "ES256", "people-only", want)
	})

	t.Run("tagged-device", func(t *testing.T) {
		want := taggedClaims(ctx, t, rt, ci)
		for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
			r := requestToken(t, tagged, srv.tailnet, url.Values{"audience": {algAudience[alg]}}, nil)
			checkIssued(t, r, srv, alg, algAudience[alg], want)
		}
		// Control reports the registering user for a tagged node; it still
		// never matches a login rule.
		r := requestToken(t, tagged, srv.tailnet, url.Values{"audience": {"people-only"}}, nil)
		checkRefused(t, "tagged device on people-only", r, http.StatusForbidden, "access_denied")
	})

	t.Run("local-process-not-on-tailnet", func(t *testing.T) {
		r := requestToken(t, local, srv.issuer, aud, nil)
		checkRefused(t, "local caller", r, http.StatusUnauthorized, "invalid_client")
		if got := r.header.Get("WWW-Authenticate"); got == "" {
			t.Errorf("401 without WWW-Authenticate")
		}
	})

	t.Run("identity-headers-change-nothing", func(t *testing.T) {
		// Everything a proxy or "tailscale serve" might add, claiming to be
		// the person's node and login.
		laptopIP := nodeIP4(ctx, t, laptop)
		spoof := http.Header{
			"X-Forwarded-For":                {laptopIP},
			"X-Real-Ip":                      {laptopIP},
			"Forwarded":                      {"for=" + laptopIP + ";proto=https"},
			"Tailscale-User-Login":           {"user-1@fake-control.example.net"},
			"Tailscale-User-Name":            {"Someone Else"},
			"Tailscale-User-Profile-Pic":     {"https://example.com/pic.png"},
			"Tailscale-Headers-Info":         {"https://tailscale.com/s/serve-headers"},
			"X-Tailscale-Node":               {"laptop." + realDomain},
			"X-Forwarded-Preferred-Username": {"user-1@fake-control.example.net"},
		}
		want := taggedClaims(ctx, t, rt, ci)
		r := requestToken(t, tagged, srv.tailnet, aud, spoof)
		checkIssued(t, r, srv, "ES256", "https://es256.example", want)
		r = requestToken(t, tagged, srv.tailnet, url.Values{"audience": {"people-only"}}, spoof)
		checkRefused(t, "tagged device posing as a person", r, http.StatusForbidden, "access_denied")
		r = requestToken(t, local, srv.issuer, aud, spoof)
		checkRefused(t, "local caller posing as a tailnet node", r, http.StatusUnauthorized, "invalid_client")
	})

	t.Run("unexpected-tailnet", func(t *testing.T) {
		other := rt.startTSIDP(t, "--tailnet", "other.ts.net")
		for _, c := range []struct {
			name string
			hc   *http.Client
		}{{"person", person}, {"tagged device", tagged}} {
			r := requestToken(t, c.hc, other.tailnet, aud, nil)
			checkRefused(t, c.name+" calling a tsidp for another tailnet", r, http.StatusForbidden, "access_denied")
			if !strings.Contains(r.answer.ErrorDescription, realDomain) {
				t.Errorf("description %q does not say which tailnet the caller is in", r.answer.ErrorDescription)
			}
		}
	})

	// The daemon keeps running through everything below: the same process
	// must serve tokens again once tailscaled is back.
	pid := srv.cmd.Process.Pid
	backAgain := func(t *testing.T) {
		t.Helper()
		t0 := time.Now()
		waitIssued(t, person, srv.tailnet, aud, 45*time.Second)
		t.Logf("person got a token again %v after tailscaled was back", time.Since(t0).Round(time.Millisecond))
		waitIssued(t, tagged, srv.tailnet, aud, 45*time.Second)
		r := requestToken(t, local, srv.issuer, aud, nil)
		checkRefused(t, "local caller, tailscaled back", r, http.StatusUnauthorized, "invalid_client")
		if srv.cmd.ProcessState != nil || syscall.Kill(pid, 0) != nil || srv.cmd.Process.Pid != pid {
			t.Fatalf("tsidp (pid %d) is not the process that was running before", pid)
		}
	}

	t.Run("tailscaled-not-running", func(t *testing.T) {
		lc := rt.idp.LocalClient()
		setWantRunning := func(v bool) {
			t.Helper()
			if _, err := lc.EditPrefs(ctx, &ipn.MaskedPrefs{Prefs: ipn.Prefs{WantRunning: v}, WantRunningSet: true}); err != nil {
				t.Fatalf("EditPrefs WantRunning=%v: %v", v, err)
			}
		}
		setWantRunning(false) // "tailscale down": reachable, but Stopped
		r := waitRefused(t, local, srv.issuer, aud, http.StatusServiceUnavailable, 10*time.Second)
		checkRefused(t, "tailscaled Stopped", r, http.StatusServiceUnavailable, "temporarily_unavailable")
		srv.waitReady(t, http.StatusServiceUnavailable, 5*time.Second)
		setWantRunning(true)
		backAgain(t)
	})

	t.Run("tailscaled-stopped", func(t *testing.T) {
		t0 := time.Now()
		if err := rt.idp.Stop(); err != nil {
			t.Fatal(err)
		}
		r := waitRefused(t, local, srv.issuer, aud, http.StatusServiceUnavailable, 10*time.Second)
		t.Logf("503 %v after stopping tailscaled", time.Since(t0).Round(time.Millisecond))
		checkRefused(t, "tailscaled stopped", r, http.StatusServiceUnavailable, "temporarily_unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After")
		}
		for _, leak := range []string{rt.idp.Socket(), "dial", "connect"} {
			if strings.Contains(r.answer.ErrorDescription, leak) {
				t.Errorf("error description %q reveals %q", r.answer.ErrorDescription, leak)
			}
		}
		srv.waitReady(t, http.StatusServiceUnavailable, 5*time.Second)
		// It stays closed while tailscaled is away (the watcher retries
		// with backoff up to 2 s; take more than one retry).
		time.Sleep(2500 * time.Millisecond)
		r = requestToken(t, local, srv.issuer, aud, nil)
		checkRefused(t, "tailscaled still stopped", r, http.StatusServiceUnavailable, "temporarily_unavailable")

		t0 = time.Now()
		if err := rt.idp.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("tailscaled Running again in %v", time.Since(t0).Round(time.Millisecond))
		backAgain(t)
		log := srv.log()
		down, up := strings.LastIndex(log, "tailscaled not usable"), strings.LastIndex(log, "tailscaled is Running")
		if down < 0 || up < down {
			t.Errorf("tsidp log does not show tailscaled going away and coming back:\n%s", log)
		}
	})
}

// nodeIP4 returns a tsnet node's tailnet IPv4 address.
func nodeIP4(ctx context.Context, t *testing.T, n *tsnet.Server) string {
	t.Helper()
	ip4, _ := n.TailscaleIPs()
	if !ip4.IsValid() {
		t.Fatal("tsnet node has no IPv4 address")
	}
	return ip4.String()
}

// personClaims is every claim a person's token must carry, apart from exp,
// iat, nbf, jti, iss and aud, as the tailnet reports the person: the node's
// own status for its IDs and tsidp's tailscaled's WhoIs for the profile.
func personClaims(ctx context.Context, t *testing.T, rt *realTailnet, n *tsnet.Server) map[string]any {
	t.Helper()
	lc, err := n.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	who, err := rt.idp.LocalClient().WhoIs(ctx, nodeIP4(ctx, t, n))
	if err != nil {
		t.Fatalf("WhoIs of the person's node on tsidp's tailscaled: %v", err)
	}
	if who.Node.StableID != st.Self.ID || who.UserProfile.ID != st.Self.UserID {
		t.Fatalf("WhoIs says node %s user %d, the node says %s user %d", who.Node.StableID, who.UserProfile.ID, st.Self.ID, st.Self.UserID)
	}
	uid := fmt.Sprint(int64(st.Self.UserID))
	login := st.User[st.Self.UserID].LoginName
	want := map[string]any{
		"sub":                "user:" + uid,
		"user_id":            uid,
		"login_name":         login,
		"preferred_username": login,
		"email":              login, // test control's logins are email addresses
		"tailnet":            realDomain,
		"node":               strings.TrimSuffix(st.Self.DNSName, "."),
		"node_id":            string(st.Self.ID),
	}
	if !strings.Contains(login, "@") || want["node"] != "laptop."+realDomain {
		t.Fatalf("unexpected test identity: login %q node %q", login, want["node"])
	}
	if dn := who.UserProfile.DisplayName; dn != "" {
		want["name"] = dn
	}
	if pic := who.UserProfile.ProfilePicURL; pic != "" {
		want["picture"] = pic
	}
	return want
}

// taggedClaims is every claim a tagged device's token must carry, apart
// from exp, iat, nbf, jti, iss and aud: no user claims at all.
func taggedClaims(ctx context.Context, t *testing.T, rt *realTailnet, d *harness.Tailscaled) map[string]any {
	t.Helper()
	st, err := d.LocalClient().StatusWithoutPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	who, err := rt.idp.LocalClient().WhoIs(ctx, d.IP4().String())
	if err != nil {
		t.Fatalf("WhoIs of the tagged node on tsidp's tailscaled: %v", err)
	}
	if who.Node.StableID != st.Self.ID || !slices.Equal(who.Node.Tags, []string{"tag:ci"}) {
		t.Fatalf("WhoIs says node %s tags %v, the node says %s", who.Node.StableID, who.Node.Tags, st.Self.ID)
	}
	return map[string]any{
		"sub":     "node:" + string(st.Self.ID),
		"tagged":  true,
		"tags":    []any{"tag:ci"},
		"tailnet": realDomain,
		"node":    strings.TrimSuffix(st.Self.DNSName, "."),
		"node_id": string(st.Self.ID),
	}
}

// checkIssued checks a token answer, verifies the token against the
// issuer's JWKS, and compares its claims with want (which holds every
// claim but the registered time claims, jti, iss and aud).
func checkIssued(t *testing.T, r tokenResult, srv *tsidpServer, alg, aud string, want map[string]any) {
	t.Helper()
	if r.status != http.StatusOK || r.answer.AccessToken == "" {
		t.Fatalf("%s: %d %s", aud, r.status, r.body)
	}
	a := r.answer
	if a.TokenType != "Bearer" || a.IssuedTokenType != "urn:ietf:params:oauth:token-type:jwt" || a.ExpiresIn <= 0 {
		t.Errorf("%s: answer %+v", aud, a)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%s: Cache-Control %q", aud, cc)
	}
	got := verifyGoJose(t, httpClient(), srv.issuer, a.AccessToken, alg, aud)
	for _, k := range []string{"exp", "iat", "nbf"} {
		if _, ok := got[k].(float64); !ok {
			t.Errorf("%s: %s = %v", aud, k, got[k])
		}
	}
	// nbf is backdated by the clock skew (default 2m), so that verifiers
	// whose clock lags accept a fresh token; iat is the issue time.
	if got["exp"].(float64)-got["iat"].(float64) != float64(a.ExpiresIn) || got["iat"].(float64)-got["nbf"].(float64) != 120 {
		t.Errorf("%s: exp %v iat %v nbf %v, expires_in %d; want nbf = iat - 120", aud, got["exp"], got["iat"], got["nbf"], a.ExpiresIn)
	}
	if jti, _ := got["jti"].(string); len(jti) != 22 {
		t.Errorf("%s: jti %q", aud, got["jti"])
	}
	if got["iss"] != srv.issuer || got["aud"] != aud {
		t.Errorf("%s: iss %v aud %v", aud, got["iss"], got["aud"])
	}
	rest := maps.Clone(got)
	for _, k := range []string{"exp", "iat", "nbf", "jti", "iss", "aud"} {
		delete(rest, k)
	}
	if !reflect.DeepEqual(rest, want) {
		t.Errorf("%s (%s) claims:\n got %v\nwant %v", aud, alg, rest, want)
	}
}

// waitRefused polls POST /token until it answers status, within bound.
func waitRefused(t *testing.T, hc *http.Client, base string, form url.Values, status int, bound time.Duration) tokenResult {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		r := requestToken(t, hc, base, form, nil)
		if r.status == status {
			return r
		}
		if r.answer.AccessToken != "" {
			t.Fatalf("got a token while waiting for %d", status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d within %v; last %d %s", status, bound, r.status, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitIssued polls POST /token through a tailnet client until a token is
// issued, within bound; 503 (tsidp has not yet seen tailscaled Running) and
// transport errors are retried, anything else fails.
func waitIssued(t *testing.T, hc *http.Client, base string, form url.Values, bound time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		r := requestToken(t, hc, base, form, nil)
		switch {
		case r.status == http.StatusOK && r.answer.AccessToken != "":
			return r.answer.AccessToken
		case r.status != http.StatusServiceUnavailable:
			t.Fatalf("waiting for a token: %d %s", r.status, r.body)
		case time.Now().After(deadline):
			t.Fatalf("no token within %v; last %d %s", bound, r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
