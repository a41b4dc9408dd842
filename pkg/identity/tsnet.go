package identity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"tailscale.com/ipn/store/mem"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

// TSNetConfig configures the "tsnet" backend: tsidp runs as its own tailnet
// node instead of beside a tailscaled.
type TSNetConfig struct {
	// Hostname is the node's name on the tailnet. Default "tsidp".
	Hostname string `yaml:"hostname"`
	// Dir holds the node's state. Default "<state-dir>/tsnet".
	Dir string `yaml:"dir"`
	// AuthKeyFile is a file holding the auth key. When empty, the TS_AUTHKEY
	// environment variable is used; when both are empty, the node needs an
	// interactive login (its URL is logged) or existing state.
	AuthKeyFile string `yaml:"auth_key_file"`
	// ControlURL is the coordination server (Headscale, or a test server).
	// Empty means Tailscale's.
	ControlURL string `yaml:"control_url"`
	// Ephemeral registers the node as ephemeral.
	Ephemeral bool `yaml:"ephemeral"`
	// Listen lists the tailnet addresses tsidp serves on. Default [":80"].
	Listen []string `yaml:"listen"`
	// AdvertiseTags requests ACL tags for tsidp's node.
	AdvertiseTags []string `yaml:"advertise_tags"`
	// InMemory keeps node state in memory only (the sandbox uses it).
	InMemory bool `yaml:"-"`
}

// Provision fills defaults.
func (c *TSNetConfig) Provision(stateDir string) {
	if c.Hostname == "" {
		c.Hostname = "tsidp"
	}
	if c.Dir == "" && stateDir != "" {
		c.Dir = stateDir + "/tsnet"
	}
	if len(c.Listen) == 0 {
		c.Listen = []string{":80"}
	}
}

// Validate checks the configuration.
func (c *TSNetConfig) Validate() error {
	if c.Dir == "" {
		return errors.New("tsnet: dir (or state_dir) is required")
	}
	if c.ControlURL != "" {
		if u, err := url.Parse(c.ControlURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("tsnet: control_url %q is not an http(s) URL", c.ControlURL)
		}
	}
	for _, l := range c.Listen {
		if _, _, err := net.SplitHostPort(l); err != nil {
			return fmt.Errorf("tsnet: listen %q: %v", l, err)
		}
	}
	return nil
}

// TSNet is a running tsnet node together with the Source that identifies
// its peers.
type TSNet struct {
	Server *tsnet.Server
	*LocalAPI
}

// StartTSNet brings up the node and returns once it is Running. The auth key
// is read here and handed to tsnet only; it never appears in logs.
func StartTSNet(ctx context.Context, cfg TSNetConfig, rules Rules, logf logger.Logf) (*TSNet, error) {
	authKey := os.Getenv("TS_AUTHKEY")
	if cfg.AuthKeyFile != "" {
		b, err := os.ReadFile(cfg.AuthKeyFile)
		if err != nil {
			return nil, fmt.Errorf("tsnet: auth key: %w", err)
		}
		authKey = strings.TrimSpace(string(b))
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("tsnet: %w", err)
	}
	// tsnet uploads its logs to Tailscale's log service by default. tsidp is
	// an identity provider: it keeps its logs on the machine it runs on.
	logtail.Disable()
	if isLoopbackURL(cfg.ControlURL) {
		// A control server on loopback (sandbox, tests) is unreachable with
		// the socket marks netns applies; tsnet's own tests turn it off too.
		netns.SetEnabled(false)
	}
	srv := &tsnet.Server{
		Dir:           cfg.Dir,
		Hostname:      cfg.Hostname,
		ControlURL:    cfg.ControlURL,
		AuthKey:       authKey,
		Ephemeral:     cfg.Ephemeral,
		AdvertiseTags: cfg.AdvertiseTags,
		UserLogf:      logf,
		Logf:          logger.Discard, // backend chatter; too noisy for operators
	}
	if cfg.InMemory {
		srv.Store = new(mem.Store)
	}
	if _, err := srv.Up(ctx); err != nil {
		srv.Close()
		return nil, fmt.Errorf("tsnet: up: %w", err)
	}
	lc, err := srv.LocalClient()
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("tsnet: %w", err)
	}
	src := NewLocalAPI(lc, rules, logf)
	if err := src.WaitRunning(ctx); err != nil {
		src.Close()
		srv.Close()
		return nil, err
	}
	return &TSNet{Server: srv, LocalAPI: src}, nil
}

// Listen opens the configured tailnet listeners.
func (t *TSNet) Listen(addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := t.Server.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("tsnet: listen %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// Close stops the watcher and the node, waiting at most 5s for the node:
// tsnet's Close can block forever inside netstack when many TCP endpoints
// are open (it queues a RST for each into a queue nothing drains any more).
func (t *TSNet) Close() error {
	t.LocalAPI.Close()
	done := make(chan error, 1)
	go func() { done <- t.Server.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("tsnet: node close did not finish within 5s; abandoning it")
	}
}

func isLoopbackURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}
