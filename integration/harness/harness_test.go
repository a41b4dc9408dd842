package harness_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tsidp/tsidp/integration/harness"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/tailnet"
	"tailscale.com/client/local"
	"tailscale.com/tsnet"
)

const domain = "harness.ts.net"

// whoAmIServer serves the caller's identity, resolved through a tailscaled's
// LocalAPI the way tsidp's "tailscale" backend does, on 127.0.0.1 (where
// userspace tailscaled forwards inbound tailnet TCP).
type whoAmIServer struct {
	lc   *local.Client
	port uint16

	mu     sync.Mutex
	whoIs  []time.Duration // server-side WhoIs latencies
	srv    *http.Server
	served chan struct{}
}

func startWhoAmI(t *testing.T, lc *local.Client) *whoAmIServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &whoAmIServer{lc: lc, port: uint16(ln.Addr().(*net.TCPAddr).Port), served: make(chan struct{})}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.served)
		s.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		s.srv.Close()
		<-s.served
	})
	return s
}

func (s *whoAmIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t0 := time.Now()
	who, err := s.lc.WhoIs(r.Context(), r.RemoteAddr)
	d := time.Since(t0)
	switch {
	case errors.Is(err, local.ErrPeerNotFound):
		http.Error(w, "whois: "+err.Error(), http.StatusUnauthorized)
		return
	case err != nil:
		http.Error(w, "whois: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	s.mu.Lock()
	s.whoIs = append(s.whoIs, d)
	s.mu.Unlock()
	id, err := identity.FromWhoIs(who, domain)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	json.NewEncoder(w).Encode(id)
}

// get fetches url with hc, retrying transport errors within a bound (peers
// may still be re-handshaking with a restarted node), and returns the
// status code and body.
func get(t *testing.T, hc *http.Client, url string) (int, []byte) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		res, err := hc.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(res.Body)
			res.Body.Close()
			cancel()
			if rerr == nil {
				return res.StatusCode, body
			}
			err = rerr
		}
		cancel()
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		t.Logf("GET %s: %v; retrying", url, err)
		time.Sleep(100 * time.Millisecond)
	}
}

func getIdentity(t *testing.T, hc *http.Client, url string) *identity.Identity {
	t.Helper()
	code, body := get(t, hc, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	var id identity.Identity
	if err := json.Unmarshal(body, &id); err != nil {
		t.Fatalf("GET %s: %v in %q", url, err, body)
	}
	return &id
}

func checkTagged(t *testing.T, id *identity.Identity, d *harness.Tailscaled) {
	t.Helper()
	st, err := d.LocalClient().StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !id.Tagged || !slices.Equal(id.Tags, []string{"tag:ci"}) || id.Subject != "node:"+string(st.Self.ID) ||
		id.UserID != "" || id.LoginName != "" || id.NodeName != "ci."+domain || id.Tailnet != domain {
		t.Errorf("tailscaled caller: got %+v, want tagged [tag:ci] node:%s ci.%s", id, st.Self.ID, domain)
	}
}

func checkPerson(t *testing.T, id *identity.Identity, s *tsnet.Server) {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	uid := int64(st.Self.UserID)
	if id.Tagged || len(id.Tags) != 0 || id.Subject != fmt.Sprintf("user:%d", uid) ||
		id.LoginName != fmt.Sprintf("user-%d@fake-control.example.net", uid) ||
		id.NodeID != string(st.Self.ID) || id.NodeName != "laptop."+domain || id.Tailnet != domain {
		t.Errorf("tsnet caller: got %+v, want person user:%d on laptop.%s", id, uid, domain)
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

// TestRealTailscaled drives two real tailscaled processes and a tsnet node
// against an in-process control server: identities of tagged and person
// callers resolved through the server-side daemon's socket, a local
// non-tailnet caller, and the daemon going down and coming back.
func TestRealTailscaled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	t0 := time.Now()
	if _, _, err := harness.Binaries(ctx); err != nil {
		t.Fatal(err) // never skip: a missing part is a failure, in CI and locally
	}
	t.Logf("binaries ready in %v", time.Since(t0).Round(time.Millisecond))

	c, err := tailnet.StartControl(tailnet.ControlConfig{
		MagicDNSDomain: domain,
		TagOwners:      map[string][]string{"tag:ci": nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() }) // after the daemons' cleanups (LIFO)

	up := func(name string, tags ...string) *harness.Tailscaled {
		t.Helper()
		t0 := time.Now()
		d := harness.StartTailscaled(ctx, t, harness.TailscaledOptions{ControlURL: c.URL()})
		t1 := time.Now()
		if err := d.Up(ctx, name, tags); err != nil {
			t.Fatal(err)
		}
		t.Logf("tailscaled %s: LocalAPI up in %v, Running in %v more (%s)", name,
			t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond), d.IP4())
		return d
	}
	d1 := up("server")
	d2 := up("ci", "tag:ci")
	t0 = time.Now()
	laptop, err := c.StartNode(ctx, tailnet.NodeConfig{Hostname: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tsnet node up in %v", time.Since(t0).Round(time.Millisecond))

	srv := startWhoAmI(t, d1.LocalClient())
	tailnetURL := fmt.Sprintf("http://%s/", netip.AddrPortFrom(d1.IP4(), srv.port))
	localURL := fmt.Sprintf("http://127.0.0.1:%d/", srv.port)

	checkCallers := func(t *testing.T) {
		t0 := time.Now()
		checkTagged(t, getIdentity(t, d2.HTTPClient(), tailnetURL), d2)
		t1 := time.Now()
		checkPerson(t, getIdentity(t, laptop.HTTPClient(), tailnetURL), laptop)
		t.Logf("tailscaled caller answered in %v, tsnet caller in %v", t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	}

	t.Run("callers", checkCallers)

	t.Run("local-caller-unknown", func(t *testing.T) {
		t0 := time.Now()
		code, body := get(t, http.DefaultClient, localURL)
		t.Logf("local caller answered in %v", time.Since(t0))
		if code != http.StatusUnauthorized || !strings.Contains(string(body), local.ErrPeerNotFound.Error()) {
			t.Errorf("local caller: %d %q, want 401 peer not found", code, body)
		}
	})

	t.Run("whois-latency", func(t *testing.T) {
		hc := laptop.HTTPClient()
		srv.mu.Lock()
		srv.whoIs = nil
		srv.mu.Unlock()
		for range 100 {
			get(t, hc, tailnetURL)
		}
		srv.mu.Lock()
		ds := srv.whoIs
		srv.mu.Unlock()
		t.Logf("socket WhoIs over %d requests: p50 %v, p99 %v", len(ds), percentile(ds, 0.5), percentile(ds, 0.99))
	})

	t.Run("restart", func(t *testing.T) {
		t0 := time.Now()
		if err := d1.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		t.Logf("tailscaled stopped in %v", time.Since(t0).Round(time.Millisecond))
		// local.Client keeps retrying a missing socket while this process
		// is younger than ~5 s and a tailscaled process exists (safesocket
		// assumes tailscaled is still starting), so this can take seconds.
		t0 = time.Now()
		_, err := d1.LocalClient().WhoIs(ctx, "100.64.0.2:1234")
		t.Logf("WhoIs with tailscaled down failed in %v: %v", time.Since(t0).Round(time.Millisecond), err)
		var opErr *net.OpError
		if err == nil || errors.Is(err, local.ErrPeerNotFound) || !errors.As(err, &opErr) {
			t.Errorf("WhoIs with tailscaled down: %v (%T), want a connection error, not %q", err, err, local.ErrPeerNotFound)
		}
		if code, body := get(t, http.DefaultClient, localURL); code != http.StatusServiceUnavailable {
			t.Errorf("request with tailscaled down: %d %q, want 503", code, body)
		}

		t0 = time.Now()
		if err := d1.Start(ctx); err != nil {
			t.Fatalf("Start: %v", err)
		}
		t.Logf("tailscaled restarted and Running in %v", time.Since(t0).Round(time.Millisecond))
		if got := d1.IP4(); !strings.HasPrefix(tailnetURL, "http://"+got.String()+":") {
			t.Errorf("IP after restart = %v, want the same node as %s", got, tailnetURL)
		}
		t0 = time.Now()
		checkCallers(t)
		t.Logf("callers resolved again %v after restart", time.Since(t0).Round(time.Millisecond))
		if code, _ := get(t, http.DefaultClient, localURL); code != http.StatusUnauthorized {
			t.Errorf("local caller after restart: %d, want 401", code)
		}
	})
}
