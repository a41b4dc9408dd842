package tailnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/netns"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
)

// DefaultNodeTimeout bounds StartNode when NodeConfig.Timeout is zero.
const DefaultNodeTimeout = 30 * time.Second

// NodeConfig configures StartNode.
type NodeConfig struct {
	// Hostname is the node's name on the tailnet; required.
	Hostname string

	// Dir is tsnet's working directory. If empty, StartNode creates a
	// temporary one that Control.Close removes. State itself is kept in
	// memory either way.
	Dir string

	// AdvertiseTags are the ACL tags the node requests, e.g. "tag:test".
	// Control honors them only when ControlConfig.TagOwners is non-nil.
	AdvertiseTags []string

	// AuthKey is presented at registration; needed when
	// ControlConfig.RequireAuthKey is set.
	AuthKey string

	// Logf receives the node's (verbose) backend logs.
	// The default discards them.
	Logf logger.Logf

	// Timeout bounds the whole start-up, registration included.
	// The default is DefaultNodeTimeout.
	Timeout time.Duration
}

// StartNode starts an ephemeral tsnet node with an in-memory state store
// against c and returns once the node is Running and connected to its home
// DERP server, so that peers can reach it right away.
//
// The node is closed by Control.Close; callers may close it earlier.
func (c *Control) StartNode(ctx context.Context, cfg NodeConfig) (_ *tsnet.Server, retErr error) {
	if cfg.Hostname == "" {
		return nil, errors.New("tailnet: node hostname is required")
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultNodeTimeout
	}
	logf := cfg.Logf
	if logf == nil {
		logf = logger.Discard
	}

	// Socket marking (netns) needs privileges and is pointless on loopback;
	// tsnet's own tests disable it the same way. Both knobs are process
	// wide, which is what a sandbox wants.
	netns.SetEnabled(false)
	// Never upload node logs to log.tailscale.com: the sandbox is offline.
	envknob.SetNoLogsNoSupport()

	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "tsidp-node-")
		if err != nil {
			return nil, fmt.Errorf("tailnet: node %q: %w", cfg.Hostname, err)
		}
		dir = d
		if !c.trackDir(d) {
			os.RemoveAll(d)
			return nil, errors.New("tailnet: control is closed")
		}
	}

	s := &tsnet.Server{
		Dir:           dir,
		Hostname:      cfg.Hostname,
		ControlURL:    c.URL(),
		Store:         new(mem.Store),
		Ephemeral:     true,
		AdvertiseTags: cfg.AdvertiseTags,
		AuthKey:       cfg.AuthKey,
		Logf:          logf,
		UserLogf:      logf,
	}
	if !c.trackNode(s) {
		return nil, errors.New("tailnet: control is closed")
	}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := s.Up(ctx); err != nil {
		return nil, fmt.Errorf("tailnet: node %q: up: %w", cfg.Hostname, err)
	}
	if err := waitHomeDERP(ctx, s); err != nil {
		return nil, fmt.Errorf("tailnet: node %q: %w", cfg.Hostname, err)
	}
	return s, nil
}

// waitHomeDERP waits until s has picked a home DERP region and received a
// frame from it. Before that, the DERP server drops disco frames addressed
// to s (PeerGoneNotHere), and a peer's first dial can stall for seconds.
// This mirrors waitForHomeDERPConnected in tsnet's tests.
func waitHomeDERP(ctx context.Context, s *tsnet.Server) error {
	h := s.Sys().HealthTracker.Get()
	ms := s.Sys().MagicSock.Get()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if r := ms.GetLastNetcheckReport(ctx); r != nil && r.PreferredDERP != 0 &&
			!h.GetDERPRegionReceivedTime(r.PreferredDERP).IsZero() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for home DERP connection: %w", ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Control) trackNode(s *tsnet.Server) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.nodes = append(c.nodes, s)
	return true
}

func (c *Control) trackDir(d string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.tempDirs = append(c.tempDirs, d)
	return true
}
