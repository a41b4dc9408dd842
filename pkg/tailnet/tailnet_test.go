package tailnet_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/tailnet"
	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

var verbose = flag.Bool("verbose-tailnet", false, "log control, DERP and node output")

const domain = "idp-test.ts.net"

// testNet is a control server with three nodes: "idp" serving whoAmI on :80,
// "person" (a user's node) and "tagged" (tag:test).
type testNet struct {
	c              *tailnet.Control
	idp            *tsnet.Server
	person, tagged *tsnet.Server
}

func logfFor(t *testing.T) logger.Logf {
	if *verbose {
		// t.Logf panics once the test is over; nodes may log while closing.
		return logger.WithPrefix(func(f string, a ...any) { fmt.Printf(f+"\n", a...) }, t.Name()+": ")
	}
	return nil
}

func startNet(t *testing.T) *testNet {
	t.Helper()
	c, err := tailnet.StartControl(tailnet.ControlConfig{
		MagicDNSDomain: domain,
		TagOwners:      map[string][]string{"tag:test": nil},
		Logf:           logfFor(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := func(name string, tags ...string) *tsnet.Server {
		t.Helper()
		t0 := time.Now()
		s, err := c.StartNode(ctx, tailnet.NodeConfig{
			Hostname:      name,
			Dir:           t.TempDir(),
			AdvertiseTags: tags,
			Logf:          logfFor(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %s up with home DERP in %v", name, time.Since(t0).Round(time.Millisecond))
		return s
	}
	n := &testNet{c: c}
	n.idp = start("idp")
	n.person = start("person")
	n.tagged = start("tagged", "tag:test")
	serveWhoAmI(t, n.idp)
	return n
}

// serveWhoAmI serves, on s's tailnet port 80, the caller's identity as tsidp
// would compute it (/) and the request headers it received (/headers).
func serveWhoAmI(t *testing.T, s *tsnet.Server) {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		who, err := lc.WhoIs(r.Context(), r.RemoteAddr)
		if errors.Is(err, local.ErrPeerNotFound) {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		} else if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		id, err := identity.FromWhoIs(who, domain)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		json.NewEncoder(w).Encode(id)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(r.Header)
	})
	// /echo reads the body, as tsidp's token endpoint does: reading it is
	// what makes net/http answer "Expect: 100-continue".
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, io.LimitReader(r.Body, 1<<20))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func getJSON[T any](t *testing.T, hc *http.Client, req *http.Request) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), 15*time.Second)
	defer cancel()
	res, err := hc.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s: %s", req.Method, req.URL, res.Status, body)
	}
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s %s: decoding %q: %v", req.Method, req.URL, body, err)
	}
	return v
}

func whoAmI(t *testing.T, hc *http.Client, url string) *identity.Identity {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return getJSON[*identity.Identity](t, hc, req)
}

func selfStatus(t *testing.T, s *tsnet.Server) *ipnstate.PeerStatus {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.Self
}

func checkPerson(t *testing.T, got *identity.Identity, s *tsnet.Server, host string) {
	t.Helper()
	self := selfStatus(t, s)
	uid := int64(self.UserID)
	want := map[string][2]string{
		"Subject":   {got.Subject, fmt.Sprintf("user:%d", uid)},
		"UserID":    {got.UserID, fmt.Sprint(uid)},
		"LoginName": {got.LoginName, fmt.Sprintf("user-%d@fake-control.example.net", uid)},
		"Tailnet":   {got.Tailnet, domain},
		"NodeName":  {got.NodeName, host + "." + domain},
		"NodeID":    {got.NodeID, string(self.ID)},
	}
	for f, gw := range want {
		if gw[0] != gw[1] {
			t.Errorf("person %s = %q, want %q", f, gw[0], gw[1])
		}
	}
	if got.Tagged || len(got.Tags) != 0 || got.Sharee {
		t.Errorf("person: Tagged=%v Tags=%v Sharee=%v, want untagged, not sharee", got.Tagged, got.Tags, got.Sharee)
	}
}

func checkTagged(t *testing.T, got *identity.Identity, s *tsnet.Server, host string) {
	t.Helper()
	self := selfStatus(t, s)
	if !got.Tagged || !slices.Equal(got.Tags, []string{"tag:test"}) {
		t.Errorf("tagged: Tagged=%v Tags=%v, want true [tag:test]", got.Tagged, got.Tags)
	}
	if want := "node:" + string(self.ID); got.Subject != want || got.NodeID != string(self.ID) {
		t.Errorf("tagged: Subject=%q NodeID=%q, want %q and %q", got.Subject, got.NodeID, want, self.ID)
	}
	if got.UserID != "" || got.LoginName != "" {
		t.Errorf("tagged: UserID=%q LoginName=%q, want no user fields", got.UserID, got.LoginName)
	}
	if got.Tailnet != domain || got.NodeName != host+"."+domain {
		t.Errorf("tagged: Tailnet=%q NodeName=%q", got.Tailnet, got.NodeName)
	}
}

func newGateway(t *testing.T, via *tsnet.Server, target string) *tailnet.Gateway {
	t.Helper()
	g, err := tailnet.NewGateway("127.0.0.1:0", via, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func TestIdentityOverTailnet(t *testing.T) {
	n := startNet(t)
	idpIP, _ := n.idp.TailscaleIPs()

	t.Run("direct/person", func(t *testing.T) {
		checkPerson(t, whoAmI(t, n.person.HTTPClient(), "http://idp/"), n.person, "person")
	})
	t.Run("direct/tagged", func(t *testing.T) {
		checkTagged(t, whoAmI(t, n.tagged.HTTPClient(), "http://"+idpIP.String()+"/"), n.tagged, "tagged")
	})
	t.Run("gateway/person", func(t *testing.T) {
		g := newGateway(t, n.person, "http://idp:80")
		checkPerson(t, whoAmI(t, http.DefaultClient, g.URL()+"/"), n.person, "person")
	})
	t.Run("gateway/tagged", func(t *testing.T) {
		g := newGateway(t, n.tagged, "http://"+idpIP.String()+":80")
		checkTagged(t, whoAmI(t, http.DefaultClient, g.URL()+"/"), n.tagged, "tagged")
	})
	t.Run("gateway/strips-identity-headers", func(t *testing.T) {
		g := newGateway(t, n.tagged, "http://idp")
		req, _ := http.NewRequest("GET", g.URL()+"/headers", nil)
		spoof := map[string]string{
			"X-Forwarded-For":      "100.64.0.1",
			"Forwarded":            "for=100.64.0.1",
			"X-Real-Ip":            "100.64.0.1",
			"Tailscale-User-Login": "user-1@fake-control.example.net",
			"Tailscale-User-Name":  "Someone Else",
		}
		for k, v := range spoof {
			req.Header.Set(k, v)
		}
		req.Header.Set("X-Kept", "yes")
		got := getJSON[http.Header](t, http.DefaultClient, req)
		for k := range spoof {
			if v := got.Values(k); len(v) != 0 {
				t.Errorf("upstream got %s: %q; want it dropped", k, v)
			}
		}
		if got.Get("X-Kept") != "yes" {
			t.Errorf("upstream lost an ordinary header: %v", got)
		}
		// And the spoofing request is still answered as the via node.
		req, _ = http.NewRequest("GET", g.URL()+"/", nil)
		req.Header.Set("Tailscale-User-Login", "user-1@fake-control.example.net")
		checkTagged(t, getJSON[*identity.Identity](t, http.DefaultClient, req), n.tagged, "tagged")
	})
	t.Run("gateway/body-limit", func(t *testing.T) {
		g := newGateway(t, n.person, "http://idp")
		body := strings.NewReader(strings.Repeat("x", tailnet.GatewayMaxBodyBytes+1))
		res, err := http.Post(g.URL()+"/", "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("oversized body: %s, want 413", res.Status)
		}
		// A body within the limit is forwarded.
		res, err = http.Post(g.URL()+"/", "application/x-www-form-urlencoded", strings.NewReader("audience=x"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("small POST: %s, want 200", res.Status)
		}
	})

	t.Run("gateway/expect-100-continue", func(t *testing.T) {
		// curl sends "Expect: 100-continue" for larger bodies. The client
		// must see one interim answer, not one from the gateway and
		// another relayed from the upstream.
		g := newGateway(t, n.person, "http://idp")
		c, err := net.Dial("tcp", strings.TrimPrefix(g.URL(), "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		body := "audience=x"
		fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", len(body))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("first answer %q, %v; want 100 Continue", line, err)
		}
		io.WriteString(c, body)
		rest, _ := io.ReadAll(br)
		if n := strings.Count(string(rest), "HTTP/1.1 100 "); n != 0 {
			t.Errorf("the gateway sent %d more 100 Continue after the first:\n%s", n, rest)
		}
		if !strings.Contains(string(rest), "HTTP/1.1 200 ") {
			t.Errorf("no 200 answer after 100 Continue:\n%s", rest)
		}
	})

	// Last: global caps apply to every node.
	t.Run("global-app-caps", func(t *testing.T) {
		const capName = "tsidp.example/cap/test"
		n.c.Server().SetGlobalAppCaps(tailcfg.PeerCapMap{
			capName: {tailcfg.RawMessage(`{"aud":["svc"]}`)},
		})
		t0 := time.Now()
		deadline := t0.Add(10 * time.Second)
		for {
			id := whoAmI(t, n.person.HTTPClient(), "http://idp/")
			if vals, ok := id.Caps[capName]; ok {
				if len(vals) != 1 || string(vals[0]) != `{"aud":["svc"]}` {
					t.Fatalf("Caps[%q] = %q", capName, vals)
				}
				t.Logf("global app cap visible in WhoIs after %v", time.Since(t0).Round(time.Millisecond))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("cap %q not in Identity.Caps after 10s: %v", capName, id.Caps)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func TestGatewayRejectsNonLoopback(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "192.0.2.1:0", "example.com:80"} {
		if g, err := tailnet.NewGateway(addr, new(tsnet.Server), "http://idp"); err == nil {
			g.Close()
			t.Errorf("NewGateway(%q) succeeded, want error", addr)
		}
	}
	for _, target := range []string{"idp:80", "ftp://idp", "http://u:p@idp", "http:///x"} {
		if g, err := tailnet.NewGateway("127.0.0.1:0", new(tsnet.Server), target); err == nil {
			g.Close()
			t.Errorf("NewGateway target %q succeeded, want error", target)
		}
	}
}

// TestControlSurvivesUnknownPaths checks that a stray request does not reach
// testcontrol's panicking catch-all (which would kill this test binary).
func TestControlSurvivesUnknownPaths(t *testing.T) {
	c, err := tailnet.StartControl(tailnet.ControlConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range []string{"/", "/favicon.ico", "/machine/map", "/machine/nope", "/derp"} {
		for _, method := range []string{"GET", "POST"} {
			req, _ := http.NewRequest(method, c.URL()+p, nil)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, p, err)
			}
			res.Body.Close()
			if res.StatusCode < 400 {
				t.Errorf("%s %s: %s, want an error status", method, p, res.Status)
			}
		}
	}
	res, err := http.Get(c.URL() + "/generate_204")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Errorf("/generate_204: %s", res.Status)
	}
	// Give a panicking goroutine, had there been one, time to crash us.
	time.Sleep(50 * time.Millisecond)
}

func TestAuthKey(t *testing.T) {
	c, err := tailnet.StartControl(tailnet.ControlConfig{RequireAuthKey: "tskey-sandbox", Logf: logfFor(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.StartNode(ctx, tailnet.NodeConfig{Hostname: "good", AuthKey: "tskey-sandbox", Logf: logfFor(t)}); err != nil {
		t.Fatalf("node with the auth key: %v", err)
	}
	_, err = c.StartNode(ctx, tailnet.NodeConfig{Hostname: "bad", AuthKey: "tskey-wrong", Timeout: 3 * time.Second, Logf: logfFor(t)})
	if err == nil {
		t.Fatal("node with a wrong auth key came up")
	}
	t.Logf("wrong key: %v", err)
}

func TestControlLoopbackOnly(t *testing.T) {
	if c, err := tailnet.StartControl(tailnet.ControlConfig{Addr: "0.0.0.0:0"}); err == nil {
		c.Close()
		t.Fatal("StartControl on 0.0.0.0 succeeded")
	}
}

// TestGatewayCloseTwice: a second Close returns (it used to wait forever
// for the serve loop's result, which the first Close had taken).
func TestGatewayCloseTwice(t *testing.T) {
	g, err := tailnet.NewGateway("127.0.0.1:0", new(tsnet.Server), "http://idp")
	if err != nil {
		t.Fatal(err)
	}
	closeWithin(t, "first Close", g.Close)
	closeWithin(t, "second Close", g.Close)
}

// closeWithin fails the test if close does not return nil within 5s.
func closeWithin(t *testing.T, what string, close func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return within 5s", what)
	}
}
