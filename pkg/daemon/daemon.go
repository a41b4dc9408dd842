// Package daemon wires tsidp's packages into a running issuer: key store and
// manager, identity backend, enrichers, the HTTP server, the admin socket and
// metrics. `tsidp serve` and `tsidp sandbox` both start tsidp through here, so
// the sandbox exercises the same code path as production.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/tsweb/varz"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/internal/httpsrv"
	"github.com/tsidp/tsidp/pkg/admin"
	"github.com/tsidp/tsidp/pkg/claims"
	"github.com/tsidp/tsidp/pkg/claims/grants"
	"github.com/tsidp/tsidp/pkg/claims/plugin"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/identity"
	"github.com/tsidp/tsidp/pkg/issue"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/oidc"
	"github.com/tsidp/tsidp/pkg/server"
	"github.com/tsidp/tsidp/pkg/session"
)

// Options are the parts of a daemon that do not come from the config file.
type Options struct {
	// Version is reported by the admin API.
	Version string
	// Logf logs; nil means the standard logger.
	Logf logger.Logf
	// TSNetInMemory keeps the tsnet node's state in memory (sandbox).
	TSNetInMemory bool
	// Builtins are plugins compiled into the binary, for "builtin:" in
	// the plugins configuration.
	Builtins map[string]plugin.Register
}

// Daemon is a running tsidp.
type Daemon struct {
	cfg    *config.Config
	opts   Options
	logf   logger.Logf
	issuer string

	store   keys.Store
	stores  *storeState // store health and leadership (store.go)
	keys    *keys.Manager
	source  identity.Source
	node    *identity.TSNet // nil with backend tailscale
	plugins *plugin.Manager // nil without plugins
	srv     *server.Server

	// Built up by Start's steps.
	keyPolicy keys.Policy
	listeners []net.Listener
	enrichers []claims.Enricher
	sessions  session.Store
	checks    []server.Check

	runCtx    context.Context // ends with Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closers   []func()
	httpSrvs  []*http.Server
	addrs     []net.Addr
	serveErrs chan error
}

// Start brings tsidp up and returns once it is serving. cfg must have been
// provisioned and validated. It runs the steps in order; if one fails,
// what the earlier ones started is stopped again.
func Start(ctx context.Context, cfg *config.Config, opts Options) (_ *Daemon, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	runCtx, cancel := context.WithCancel(context.Background())
	d := &Daemon{cfg: cfg, opts: opts, logf: logf, runCtx: runCtx, cancel: cancel, serveErrs: make(chan error, 8)}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	for _, step := range []func(context.Context) error{
		d.checkStateDir,
		d.startKeys, // first: if the store is unusable there is nothing to serve
		d.startIdentity,
		d.startEnrichers,
		d.startSessions,
		d.startIssuer,
		d.startAdmin,
		d.startMetrics,
	} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	logf("tsidp: serving issuer %s (backend %s, store %s) on %s", d.issuer, cfg.Backend, cfg.Keys.Store, strings.Join(addrStrings(d.addrs), ", "))
	return d, nil
}

// checkStateDir creates the state dir, and refuses one that others could
// write to (they could replace the admin socket).
func (d *Daemon) checkStateDir(context.Context) error {
	if err := os.MkdirAll(d.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("daemon: state dir: %w", err)
	}
	return admin.CheckDir("state dir", d.cfg.StateDir)
}

// startKeys opens the key store and starts the key manager, with leader
// election and health probes where the store has them.
func (d *Daemon) startKeys(ctx context.Context) error {
	kp, err := d.cfg.KeyPolicy()
	if err != nil {
		return err
	}
	d.keyPolicy = kp
	if d.store, err = openStore(ctx, d.cfg, d.logf); err != nil {
		return err
	}
	// Closing the store also resigns etcd leadership (etcdstore.Close).
	d.closers = append(d.closers, func() { d.store.Close() })
	// With etcd, only the elected leader rotates on schedule (store.go).
	d.stores = newStoreState(d.store, d.logf)
	if d.keys, err = keys.NewManager(ctx, d.store, kp, d.logf, d.stores.managerOptions()...); err != nil {
		return fmt.Errorf("daemon: keys: %w", err)
	}
	d.stores.start(d.runCtx, d.keys, d.goRun)
	d.goRun(func() { d.keys.Run(d.runCtx) })
	d.checks = append([]server.Check{{Name: "keys", Check: d.keysReady, Reason: "no active signing key"}}, d.stores.readyChecks()...)
	return nil
}

// startIdentity starts the identity backend and opens the listeners that
// go with it: local TCP addresses beside tailscaled, tailnet addresses of
// the tsnet node. It settles the issuer.
func (d *Daemon) startIdentity(ctx context.Context) error {
	cfg := d.cfg
	switch cfg.Backend {
	case "tailscale":
		lc := &local.Client{Socket: cfg.Tailscale.Socket, UseSocketOnly: cfg.Tailscale.Socket != ""}
		src := identity.NewLocalAPI(lc, cfg.Identity, d.logf)
		d.closers = append(d.closers, func() { src.Close() })
		d.source = src
		for _, addr := range cfg.Listen {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("daemon: listen: %w", err)
			}
			d.addListener(ln)
		}
	case "tsnet":
		tc := cfg.TSNet
		tc.InMemory = tc.InMemory || d.opts.TSNetInMemory
		node, err := identity.StartTSNet(ctx, tc, cfg.Identity, d.logf)
		if err != nil {
			return err
		}
		d.node = node
		d.closers = append(d.closers, func() { node.Close() })
		d.source = node
		lns, err := node.Listen(tc.Listen)
		if err != nil {
			return err
		}
		for _, ln := range lns {
			d.addListener(ln)
		}
	default:
		return fmt.Errorf("daemon: unknown backend %q", cfg.Backend)
	}
	d.issuer = cfg.Issuer
	if d.issuer == "" && d.node != nil {
		d.issuer = d.tsnetIssuer(ctx)
	}
	return nil
}

// addListener keeps ln for startIssuer, closed with the daemon if the
// start fails before it is served (serving closes it too; twice is fine).
func (d *Daemon) addListener(ln net.Listener) {
	d.listeners = append(d.listeners, ln)
	d.closers = append(d.closers, func() { ln.Close() })
}

// startEnrichers sets up the sources of claims, in merge order: tailnet
// grants, then plugins.
func (d *Daemon) startEnrichers(ctx context.Context) error {
	if c := d.cfg.Grants.Capability; c != "" {
		d.enrichers = append(d.enrichers, grants.New(c, d.logf))
	}
	if len(d.cfg.Plugins) == 0 {
		return nil
	}
	var err error
	if d.plugins, err = plugin.New(d.cfg.Plugins, plugin.Options{Logf: d.logf, Builtins: d.opts.Builtins}); err != nil {
		return err
	}
	d.closers = append(d.closers, func() { d.plugins.Close() })
	if err := d.plugins.Start(ctx); err != nil {
		return err
	}
	d.enrichers = append(d.enrichers, d.plugins.Enrichers()...)
	// The reasons are what /readyz shows; the errors are logged when a
	// check's status changes, and the admin status reports them.
	d.checks = append(d.checks, server.Check{Name: "plugins", Check: d.plugins.Ready,
		Reason: "a required claims plugin is not serving"})
	return nil
}

// startSessions opens the store of login sessions (config.SessionStore).
func (d *Daemon) startSessions(ctx context.Context) error {
	sc, err := d.cfg.SessionStore()
	if err != nil {
		return err
	}
	st, err := sc.OpenStore(ctx)
	if err != nil {
		return err
	}
	d.sessions = st
	d.closers = append(d.closers, func() { st.Close() })
	return nil
}

// startIssuer builds the issuance core, the OpenID Provider and the HTTP
// server, and serves it on the listeners.
func (d *Daemon) startIssuer(context.Context) error {
	reg, err := d.cfg.AudienceRegistry()
	if err != nil {
		return err
	}
	kp := d.keyPolicy
	core, err := issue.New(issue.Config{
		Issuer:    d.issuer,
		Audiences: reg,
		Enrichers: d.enrichers,
		ClockSkew: kp.ClockSkew,
		Logf:      d.logf,
	})
	if err != nil {
		return err
	}
	d.goRun(func() { core.LogSummaries(d.runCtx, time.Minute) })
	algs := make([]string, 0, len(kp.Algorithms))
	for _, a := range kp.Algorithms {
		algs = append(algs, string(a))
	}
	clientReg, err := d.cfg.ClientRegistry()
	if err != nil {
		return err
	}
	ident := server.NewIdentifier(d.source, 0, nil)
	provider, err := oidc.New(oidc.Config{
		Core:        core,
		Clients:     clientReg,
		Sessions:    d.sessions,
		Signer:      d.keys,
		Identify:    ident.Identify,
		Source:      d.source,
		Confirm:     d.cfg.OIDC.Confirm,
		IdleTimeout: d.cfg.OIDC.SessionIdleTimeout,
		Lifetime:    d.cfg.OIDC.SessionLifetime,
		Logf:        d.logf,
	})
	if err != nil {
		return err
	}
	if d.srv, err = server.New(server.Config{
		Core:       core,
		Provider:   provider,
		Identifier: ident,
		Signer:     d.keys,
		Algorithms: algs,
		JWKSMaxAge: kp.JWKSMaxAge,
		Logf:       d.logf,
		Ready:      d.checks,
	}); err != nil {
		return err
	}
	for _, ln := range d.listeners {
		d.serveHTTP(d.srv.NewHTTPServer(), ln)
	}
	publishMetrics(d.srv)
	return nil
}

// startAdmin serves the operator API on the admin socket.
func (d *Daemon) startAdmin(context.Context) error {
	aln, err := admin.Listen(d.cfg.Admin.Socket)
	if err != nil {
		return err
	}
	// Closing removes the socket, then releases its lock (the HTTP server
	// closes it too; closing twice is fine). Removing the path afterwards
	// could remove a successor's socket.
	d.closers = append(d.closers, func() { aln.Close() })
	d.serveHTTP(admin.NewServer(admin.Config{
		Keys:    d.keys,
		Version: d.opts.Version,
		Issuer:  d.issuer,
		Backend: d.cfg.Backend,
		IdentityReady: func(ctx context.Context) error {
			if c, ok := d.source.(identity.Checker); ok {
				return c.Ready(ctx)
			}
			return nil
		},
		Plugins: func() any {
			if d.plugins == nil {
				return nil
			}
			return d.plugins.Health()
		},
		StoreHealth: d.stores.check,
		Logf:        d.logf,
	}), aln)
	return nil
}

// startMetrics serves Prometheus metrics on the metrics listener, if one is
// configured.
func (d *Daemon) startMetrics(context.Context) error {
	publishStoreMetrics(d.stores)
	if d.cfg.Admin.MetricsListen == "" {
		return nil
	}
	mln, err := net.Listen("tcp", d.cfg.Admin.MetricsListen)
	if err != nil {
		return fmt.Errorf("daemon: metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", varz.Handler)
	d.serveHTTP(httpsrv.New(mux, httpsrv.Options{}), mln)
	return nil
}

// Issuer returns the issuer URL in use.
func (d *Daemon) Issuer() string { return d.issuer }

// Node returns the tsnet node, or nil with backend tailscale.
func (d *Daemon) Node() *identity.TSNet { return d.node }

// Err returns a channel that receives the first fatal serving error.
func (d *Daemon) Err() <-chan error { return d.serveErrs }

// Close shuts everything down: listeners stop accepting, requests in flight
// get a few seconds to finish, then backends and the store close.
func (d *Daemon) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range d.httpSrvs {
		s.Shutdown(ctx)
	}
	d.cancel()
	d.wg.Wait()
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
	return nil
}

func (d *Daemon) goRun(f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

func (d *Daemon) serveHTTP(s *http.Server, ln net.Listener) {
	d.httpSrvs = append(d.httpSrvs, s)
	if _, isUnix := ln.Addr().(*net.UnixAddr); !isUnix {
		d.addrs = append(d.addrs, ln.Addr())
	}
	d.goRun(func() {
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			select {
			case d.serveErrs <- fmt.Errorf("daemon: serving on %v: %w", ln.Addr(), err):
			default:
			}
		}
	})
}

// tsnetIssuer derives the issuer from the node's MagicDNS name.
func (d *Daemon) tsnetIssuer(ctx context.Context) string {
	lc, err := d.node.Server.LocalClient()
	if err == nil {
		if st, err := lc.StatusWithoutPeers(ctx); err == nil && st.Self != nil {
			host := strings.TrimSuffix(st.Self.DNSName, ".")
			port := ""
			if l := d.cfg.TSNet.Listen; len(l) > 0 {
				if _, p, _ := net.SplitHostPort(l[0]); p != "80" && p != "" {
					port = ":" + p
				}
			}
			return "http://" + host + port
		}
	}
	return "http://" + d.cfg.TSNet.Hostname
}

func addrStrings(as []net.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

var publishOnce sync.Once

// publishMetrics exposes the first server's counters under "tsidp_" in
// expvar, where varz renders them for Prometheus.
func publishMetrics(s *server.Server) {
	publishOnce.Do(func() {
		expvarPublish("tsidp", s.Metrics())
	})
}

// keysReady reports whether every configured algorithm has an active key.
func (d *Daemon) keysReady(context.Context) error {
	st := d.keys.Status(time.Now())
	for _, a := range st.Algorithms {
		if a.Active == "" {
			return fmt.Errorf("keys: no active %s key", a.Algorithm)
		}
	}
	return nil
}
