// Package sandbox runs a whole tailnet with tsidp on it in one process, on
// loopback and offline: a real control server with DERP and STUN, tsidp as a
// tsnet node (the same code path as `tsidp serve --backend tsnet`), and two
// client nodes — a person and a tagged device — each exposed on a loopback
// gateway that forwards every request through the tailnet to tsidp.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"tailscale.com/tsnet"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/audience"
	"github.com/tsidp/tsidp/pkg/clients"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/daemon"
	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/tailnet"
)

// Defaults for the gateways.
const (
	DefaultListen       = "127.0.0.1:8484"
	DefaultListenTagged = "127.0.0.1:8485"
	// Tag is the tag of the sandbox's tagged device.
	Tag = "tag:sandbox"
	// Domain is the sandbox tailnet's MagicDNS domain.
	Domain = "sandbox.ts.net"
)

// Options configure a sandbox.
type Options struct {
	// Listen is the person's gateway; its URL is the issuer.
	Listen string
	// ListenTagged is the tagged device's gateway.
	ListenTagged string
	// ListenApp is the demo relying party ("Sandbox App"), which logs
	// people in with tsidp. Empty: a free loopback port.
	ListenApp string
	// StateDir holds keys and the admin socket. Empty: a temporary
	// directory, removed on Close.
	StateDir string
	// Config, if non-nil, is used instead of the default configuration;
	// backend, control URL and issuer are set by the sandbox.
	Config *config.Config
	// Logf receives tsidp's logs; nil discards them.
	Logf logger.Logf
}

// Sandbox is a running sandbox.
type Sandbox struct {
	Control     *tailnet.Control
	Daemon      *daemon.Daemon
	Person      *tsnet.Server
	Tagged      *tsnet.Server
	Gateway     *tailnet.Gateway
	TaggedGW    *tailnet.Gateway
	App         *App
	StateDir    string
	AdminSocket string
	removeState bool

	closeOnce sync.Once
	closeErr  error
}

// Start brings the sandbox up. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.ListenTagged == "" {
		opts.ListenTagged = DefaultListenTagged
	}
	if opts.ListenApp == "" {
		opts.ListenApp = "127.0.0.1:0" // the command's flag defaults to DefaultListenApp
	}
	logf := opts.Logf
	if logf == nil {
		logf = logger.Discard
	}
	s := &Sandbox{StateDir: opts.StateDir}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// Claim both gateway ports first: failing on a busy port after bringing
	// up a tailnet would be slow and confusing.
	for _, a := range []string{opts.Listen, opts.ListenTagged} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		ln.Close()
	}
	appLn, err := net.Listen("tcp", opts.ListenApp)
	if err != nil {
		return nil, fmt.Errorf("sandbox: demo app: %w", err)
	}
	defer func() {
		if err != nil {
			appLn.Close()
		}
	}()
	appSecret := session.NewSecret()
	if s.StateDir == "" {
		if s.StateDir, err = os.MkdirTemp("", "tsidp-sandbox-"); err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		s.removeState = true
	}

	s.Control, err = tailnet.StartControl(tailnet.ControlConfig{
		MagicDNSDomain: Domain,
		TagOwners:      map[string][]string{Tag: nil},
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}

	cfg := opts.Config
	if cfg == nil {
		cfg = new(config.Config)
	}
	cfg.Backend = "tsnet"
	cfg.StateDir = s.StateDir
	cfg.Issuer = "http://" + opts.Listen
	cfg.TSNet.ControlURL = s.Control.URL()
	cfg.TSNet.Ephemeral = true
	if cfg.TSNet.Hostname == "" {
		cfg.TSNet.Hostname = "tsidp"
	}
	cfg.TSNet.Listen = []string{":80"}
	cfg.Admin.Socket = "" // always <state-dir>/admin.sock, so `keys --state-dir` finds it
	// Sandbox-sized key numbers: verifiers may cache the JWKS for 2s, so a
	// freshly published next key may sign after 3s and `tsidp keys rotate`
	// works moments after start — the guarantees still hold, just scaled.
	if cfg.Keys.JWKSMaxAge == nil {
		maxAge := 2 * time.Second
		cfg.Keys.JWKSMaxAge = &maxAge
	}
	if cfg.Keys.ClockSkew == 0 {
		cfg.Keys.ClockSkew = time.Second
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []audience.Config{{Name: "sandbox", Allow: []string{"*"}}}
	}
	cfg.Clients = append(slices.DeleteFunc(cfg.Clients, func(c clients.Config) bool { return c.ID == AppClientID }),
		appClient(appLn.Addr().String(), appSecret))
	cfg.Provision()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	s.AdminSocket = cfg.Admin.Socket

	s.Daemon, err = daemon.Start(ctx, cfg, daemon.Options{Version: "sandbox", Logf: logf, TSNetInMemory: true})
	if err != nil {
		return nil, err
	}
	ip4, _ := s.Daemon.Node().Server.TailscaleIPs()
	target := "http://" + ip4.String()

	if s.Person, err = s.Control.StartNode(ctx, tailnet.NodeConfig{Hostname: "alice-laptop"}); err != nil {
		return nil, fmt.Errorf("sandbox: person node: %w", err)
	}
	if s.Tagged, err = s.Control.StartNode(ctx, tailnet.NodeConfig{Hostname: "ci-runner", AdvertiseTags: []string{Tag}}); err != nil {
		return nil, fmt.Errorf("sandbox: tagged node: %w", err)
	}
	if s.Gateway, err = tailnet.NewGateway(opts.Listen, s.Person, target); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if s.TaggedGW, err = tailnet.NewGateway(opts.ListenTagged, s.Tagged, target); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if s.App, err = startApp(ctx, appLn, s.Issuer(), appSecret); err != nil {
		return nil, err
	}
	return s, nil
}

// Issuer returns the issuer URL (the person's gateway).
func (s *Sandbox) Issuer() string { return s.Daemon.Issuer() }

// PrintBanner writes what the sandbox is and how to use it.
func (s *Sandbox) PrintBanner(w io.Writer, audiences []string) {
	iss := s.Issuer()
	aud := "sandbox"
	if len(audiences) > 0 {
		aud = audiences[0]
	}
	fmt.Fprintf(w, `tsidp sandbox is running: a tailnet on loopback with tsidp and two client nodes.

  issuer          %s
  person          %s  (alice-laptop, a user's device)
  tagged device   %s  (ci-runner, %s)
  demo web app    %s  (open it in a browser: it signs you in with tsidp)
  state dir       %s

Try:
  curl -s -d audience=%s %s/token
  curl -s -d audience=%s %s/token
  curl -s %s/.well-known/openid-configuration
  curl -s %s/.well-known/jwks.json
  go run ./cmd/tsidp keys list --state-dir %s
  go run ./cmd/tsidp keys rotate --state-dir %s

Press Ctrl-C to stop.
`, iss, s.Gateway.URL(), s.TaggedGW.URL(), Tag, s.App.URL(), s.StateDir,
		aud, s.Gateway.URL(), aud, s.TaggedGW.URL(), iss, iss, quote(s.StateDir), quote(s.StateDir))
}

func quote(s string) string {
	if strings.ContainsAny(s, " '\"$") {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return s
}

// Close stops everything, in reverse order. Calling it again returns what
// the first call returned.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Sandbox) close() error {
	var errs []error
	if s.App != nil {
		errs = append(errs, s.App.Close())
	}
	for _, g := range []*tailnet.Gateway{s.TaggedGW, s.Gateway} {
		if g != nil {
			errs = append(errs, g.Close())
		}
	}
	for _, n := range []*tsnet.Server{s.Tagged, s.Person} {
		if n != nil {
			errs = append(errs, tailnet.CloseNode(n))
		}
	}
	if s.Daemon != nil {
		errs = append(errs, s.Daemon.Close())
	}
	if s.Control != nil {
		errs = append(errs, s.Control.Close())
	}
	if s.removeState && s.StateDir != "" {
		errs = append(errs, os.RemoveAll(s.StateDir))
	}
	return errors.Join(errs...)
}
