package identity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/types/logger"
)

// LocalAPI is a Source backed by tailscaled's LocalAPI: a local tailscaled over
// its unix socket (backend "tailscale"), or the embedded node's in-process
// LocalAPI (backend "tsnet"). Both backends share this code path.
//
// It watches the IPN bus so that the request path knows, without a round trip,
// whether the node is Running; WhoIs is then one LocalAPI call per lookup.
type LocalAPI struct {
	client *local.Client
	rules  Rules
	logf   logger.Logf

	// WhoIsTimeout bounds one WhoIs call.
	whoisTimeout time.Duration

	mu     sync.Mutex
	state  ipn.State // last known backend state; NoState when unknown
	reason string    // why we are not Running, for errors and /readyz
	// downLogged: the current not-Running spell has been logged.
	downLogged bool
	tailnet    string // our own tailnet's MagicDNS suffix, once known
	ready      chan struct{}
	stop       context.CancelFunc
	done       chan struct{}

	// wait sleeps for d between reconnection attempts, returning false if
	// ctx ended first. Tests replace it to record the backoff.
	wait func(ctx context.Context, d time.Duration) bool
}

// Reconnection backoff of the IPN bus watcher.
const (
	watchBackoffMin = 50 * time.Millisecond
	watchBackoffMax = 2 * time.Second
)

var (
	_ Source  = (*LocalAPI)(nil)
	_ Checker = (*LocalAPI)(nil)
)

// NewLocalAPI returns a Source using client and starts watching the backend
// state. Call Close to stop watching.
func NewLocalAPI(client *local.Client, rules Rules, logf logger.Logf) *LocalAPI {
	return newLocalAPI(client, rules, logf, sleepCtx)
}

func newLocalAPI(client *local.Client, rules Rules, logf logger.Logf, wait func(context.Context, time.Duration) bool) *LocalAPI {
	if logf == nil {
		logf = logger.Discard
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &LocalAPI{
		client:       client,
		rules:        rules,
		logf:         logf,
		whoisTimeout: 3 * time.Second,
		reason:       "tailscaled state not yet known",
		ready:        make(chan struct{}),
		stop:         cancel,
		done:         make(chan struct{}),
		wait:         wait,
	}
	go s.watch(ctx)
	return s
}

// Close stops the state watcher.
func (s *LocalAPI) Close() error {
	s.stop()
	<-s.done
	return nil
}

// WaitRunning blocks until the backend has been seen Running or ctx ends.
func (s *LocalAPI) WaitRunning(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("identity: waiting for tailscaled: %w (%s)", ctx.Err(), s.notRunningReason())
	}
}

// Identify resolves peer with WhoIs and applies the identity rules.
func (s *LocalAPI) Identify(ctx context.Context, peer netip.AddrPort) (*Identity, error) {
	s.mu.Lock()
	running, reason, own := s.state == ipn.Running, s.reason, s.tailnet
	s.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("identity: %w: %s", ErrUnavailable, reason)
	}
	ctx, cancel := context.WithTimeout(ctx, s.whoisTimeout)
	defer cancel()
	// tsidp only serves TCP; asking for TCP alone spares an unknown peer
	// tailscaled's UDP fallback, which doubles the time to say "not found".
	who, err := s.client.WhoIsProto(ctx, "tcp", peer.String())
	switch {
	case errors.Is(err, local.ErrPeerNotFound):
		return nil, fmt.Errorf("identity: whois %v: %w", peer, ErrUnknownPeer)
	case err != nil:
		return nil, fmt.Errorf("identity: whois %v: %w: %v", peer, ErrUnavailable, err)
	}
	id, err := FromWhoIs(who, own)
	if err != nil {
		return nil, fmt.Errorf("identity: whois %v: %w", peer, err)
	}
	if err := s.rules.Check(id); err != nil {
		return nil, err
	}
	return id, nil
}

// Ready reports whether tailscaled is reachable and Running.
func (s *LocalAPI) Ready(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != ipn.Running {
		return fmt.Errorf("identity: %w: %s", ErrUnavailable, s.reason)
	}
	return nil
}

func (s *LocalAPI) notRunningReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

func (s *LocalAPI) setState(st ipn.State, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Log transitions, and the first failure too: tsidp starts in NoState,
	// and a tailscaled unreachable from the start must not go unsaid.
	if st != s.state || (st != ipn.Running && !s.downLogged) {
		if st == ipn.Running {
			s.logf("identity: tailscaled is Running")
		} else {
			s.logf("identity: tailscaled not usable (answering 503 until it is): %s", reason)
		}
		s.downLogged = st != ipn.Running
	}
	s.state, s.reason = st, reason
	if st == ipn.Running {
		select {
		case <-s.ready:
		default:
			close(s.ready)
		}
	}
}

// watch follows the IPN bus for state changes, reconnecting with bounded
// backoff while tailscaled is unreachable. Any break in the stream marks the
// backend unavailable until a fresh initial state arrives: fail closed.
//
// The backoff starts over after a watch that saw the Running state, so that
// each tailscaled restart is followed by quick reconnects rather than by
// the longest wait, which earlier outages had built up.
func (s *LocalAPI) watch(ctx context.Context) {
	defer close(s.done)
	backoff := watchBackoffMin
	for ctx.Err() == nil {
		sawRunning, err := s.watchOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.setState(ipn.NoState, fmt.Sprintf("tailscaled unreachable: %v", err))
		if sawRunning {
			backoff = watchBackoffMin
		}
		if !s.wait(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, watchBackoffMax)
	}
}

// watchOnce follows one IPN bus stream until it breaks, and reports whether
// the backend was seen Running on it. It always ends with an error.
func (s *LocalAPI) watchOnce(ctx context.Context) (sawRunning bool, _ error) {
	w, err := s.client.WatchIPNBus(ctx, ipn.NotifyInitialState)
	if err != nil {
		return false, err
	}
	defer w.Close()
	for {
		n, err := w.Next()
		if err != nil {
			return sawRunning, err
		}
		if n.State == nil {
			continue
		}
		st := *n.State
		if st == ipn.Running {
			if err := s.learnTailnet(ctx); err != nil {
				// Without our own tailnet we cannot tell sharees apart; stay
				// unavailable rather than guess, and retry from scratch.
				return sawRunning, fmt.Errorf("reading tailnet: %w", err)
			}
			sawRunning = true
		}
		s.setState(st, "tailscaled state is "+st.String())
	}
}

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (s *LocalAPI) learnTailnet(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := s.client.StatusWithoutPeers(ctx)
	if err != nil {
		return err
	}
	suffix := ""
	if st.CurrentTailnet != nil {
		suffix = st.CurrentTailnet.MagicDNSSuffix
	}
	if suffix == "" && st.Self != nil {
		_, suffix, _ = strings.Cut(strings.TrimSuffix(st.Self.DNSName, "."), ".")
	}
	s.mu.Lock()
	s.tailnet = suffix
	s.mu.Unlock()
	return nil
}
