// Package tailnet runs a complete, offline tailnet on loopback inside the
// current process: a real control server (testcontrol), a DERP relay and a
// STUN responder, plus helpers to start tsnet nodes against it and to expose
// a tailnet HTTP service on a loopback address.
//
// It backs the "tsidp sandbox" command and the tests, so it must not import
// the testing package (see deps_test.go). Nothing here talks to the internet:
// every server listens on 127.0.0.1 and nodes are told not to upload logs.
package tailnet

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"

	"tailscale.com/derp/derpserver"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// DefaultMagicDNSDomain is the MagicDNS suffix (and thus the tailnet name)
// used when ControlConfig.MagicDNSDomain is empty.
const DefaultMagicDNSDomain = "sandbox.ts.net"

// ControlConfig configures StartControl. All options are applied before the
// control server starts serving: testcontrol must not be mutated while nodes
// talk to it.
type ControlConfig struct {
	// Addr is the TCP address the control server listens on.
	// The default is "127.0.0.1:0". It must be a loopback address.
	Addr string

	// MagicDNSDomain is the tailnet's MagicDNS suffix; nodes are named
	// "<host>.<MagicDNSDomain>". The default is DefaultMagicDNSDomain.
	MagicDNSDomain string

	// TagOwners, if non-nil, makes control honor the tags nodes request
	// (tsnet AdvertiseTags, "tailscale up --advertise-tags"). Keys are tags
	// such as "tag:ci"; values are the tags allowed to assign them, which
	// only matter for later retagging. If nil, requested tags are ignored.
	TagOwners map[string][]string

	// AllNodesSameUser puts every node under one user. By default each
	// node gets its own user, user-N@fake-control.example.net.
	AllNodesSameUser bool

	// RequireAuthKey, if non-empty, is the auth key every node must
	// present to register.
	RequireAuthKey string

	// ModifyFirstMapResponse, if non-nil, is called once per map stream
	// to modify the first MapResponse sent to a node (for example to add
	// a packet filter rule with a CapGrant from one source only).
	ModifyFirstMapResponse func(*tailcfg.MapResponse, *tailcfg.MapRequest)

	// Logf receives the control and DERP servers' logs.
	// The default discards them.
	Logf logger.Logf
}

// Control is an in-process tailnet: a testcontrol server, an in-process DERP
// server over TLS and a STUN responder, all on 127.0.0.1.
type Control struct {
	logf    logger.Logf
	srv     *testcontrol.Server
	http    *httptest.Server
	derp    *derpserver.Server
	derpWeb *httptest.Server
	stun    *stunServer
	derpMap *tailcfg.DERPMap

	mu       sync.Mutex
	closed   bool
	nodes    []*tsnet.Server
	tempDirs []string
}

// StartControl starts a control server with its DERP and STUN servers.
// Call Close to stop them.
func StartControl(cfg ControlConfig) (_ *Control, retErr error) {
	logf := cfg.Logf
	if logf == nil {
		logf = logger.Discard
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	if err := checkLoopback(addr); err != nil {
		return nil, fmt.Errorf("tailnet: control address: %w", err)
	}
	domain := cfg.MagicDNSDomain
	if domain == "" {
		domain = DefaultMagicDNSDomain
	}

	c := &Control{logf: logf}
	defer func() {
		if retErr != nil {
			c.Close()
		}
	}()

	var err error
	if c.stun, err = startSTUN("127.0.0.1:0", logf); err != nil {
		return nil, fmt.Errorf("tailnet: starting STUN: %w", err)
	}
	if err := c.startDERP(); err != nil {
		return nil, fmt.Errorf("tailnet: starting DERP: %w", err)
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tailnet: control listener: %w", err)
	}
	c.srv = &testcontrol.Server{
		Logf:                   logf,
		DERPMap:                c.derpMap,
		DNSConfig:              &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain:         domain,
		TagOwners:              cfg.TagOwners,
		AllNodesSameUser:       cfg.AllNodesSameUser,
		RequireAuthKey:         cfg.RequireAuthKey,
		ModifyFirstMapResponse: cfg.ModifyFirstMapResponse,
		AllOnline:              true,
	}
	c.http = httptest.NewUnstartedServer(controlPaths(c.srv))
	c.http.Listener.Close()
	c.http.Listener = ln
	c.http.Config.ErrorLog = logger.StdLogger(logf)
	// testcontrol reads BaseURL from HTTPTestServer once it has started.
	c.srv.HTTPTestServer = c.http
	c.http.Start()
	return c, nil
}

// controlPaths guards testcontrol against requests for paths it does not
// know: for those it panics in a new goroutine, which would kill the whole
// process (a stray curl must not take the sandbox down). The list mirrors
// testcontrol's own mux.
func controlPaths(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == "/key", p == "/ts2021", p == "/generate_204", strings.HasPrefix(p, "/c2n/"):
		case strings.HasPrefix(p, "/machine/"):
			// Clients send /machine/ requests only inside the Noise
			// channel (/ts2021), which does not pass through here. Plain
			// ones carry no peer key and make testcontrol panic.
			http.Error(w, "machine requests must use /ts2021", http.StatusBadRequest)
			return
		default:
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// startDERP starts the DERP server over TLS and builds the one-region
// DERPMap pointing at it and at the STUN responder.
func (c *Control) startDERP() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	c.derp = derpserver.New(key.NewNode(), c.logf)
	c.derpWeb = httptest.NewUnstartedServer(derpserver.Handler(c.derp))
	c.derpWeb.Listener.Close()
	c.derpWeb.Listener = ln
	c.derpWeb.Config.ErrorLog = logger.StdLogger(c.logf)
	// DERP upgrades HTTP/1.1 connections; an empty (non-nil) TLSNextProto
	// keeps the server from negotiating HTTP/2.
	c.derpWeb.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	c.derpWeb.StartTLS()

	c.derpMap = &tailcfg.DERPMap{
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "sandbox",
				RegionName: "Sandbox loopback",
				Nodes: []*tailcfg.DERPNode{{
					Name:       "1a",
					RegionID:   1,
					HostName:   "127.0.0.1",
					IPv4:       "127.0.0.1",
					IPv6:       "none",
					STUNPort:   c.stun.Port(),
					DERPPort:   ln.Addr().(*net.TCPAddr).Port,
					STUNTestIP: "127.0.0.1",
					// The certificate is httptest's self-signed one.
					InsecureForTests: true,
				}},
			},
		},
	}
	return nil
}

// URL returns the control server's base URL, e.g. "http://127.0.0.1:41234",
// for tsnet's ControlURL or "tailscale up --login-server".
func (c *Control) URL() string { return c.http.URL }

// Server returns the underlying testcontrol server, for runtime changes such
// as SetGlobalAppCaps. Its exported configuration fields must not be changed
// once StartControl has returned.
func (c *Control) Server() *testcontrol.Server { return c.srv }

// Close stops every node started with StartNode, then the control, DERP and
// STUN servers, and removes the temporary directories it created.
// It is safe to call more than once.
func (c *Control) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	nodes, dirs := c.nodes, c.tempDirs
	c.nodes, c.tempDirs = nil, nil
	c.mu.Unlock()

	// Nodes first, so they do not spend their last moments reconnecting
	// to servers that are going away.
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() { CloseNode(n) })
	}
	wg.Wait()

	if c.http != nil {
		c.http.CloseClientConnections()
		c.http.Close()
	}
	if c.derpWeb != nil {
		c.derpWeb.CloseClientConnections()
		c.derpWeb.Close()
	}
	var errs []error
	if c.derp != nil {
		errs = append(errs, c.derp.Close())
	}
	if c.stun != nil {
		errs = append(errs, c.stun.Close())
	}
	for _, d := range dirs {
		errs = append(errs, os.RemoveAll(d))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tailnet: closing control: %w", err)
	}
	return nil
}

// checkLoopback reports an error unless addr is host:port with a loopback
// host: nothing in this package is meant to be reachable from the network.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	return nil
}
