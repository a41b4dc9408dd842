package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/tsidp/tsidp/pkg/identity"
)

// connState is the per-connection identity cache. Tailnet connections map
// one-to-one to a peer node, so one WhoIs answers for every request on the
// connection until the cache ages out.
type connState struct {
	peer netip.AddrPort

	mu sync.Mutex
	id *identity.Identity
	at time.Time
}

type connKey struct{}

func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connState{peer: addrPortOf(c.RemoteAddr())})
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// identify returns the caller's identity, from the connection cache when it
// is fresh and the backend is still ready.
func (s *Server) identify(r *http.Request) (*identity.Identity, error) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	if cs == nil {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			return nil, fmt.Errorf("%w: unparsable peer address", identity.ErrUnknownPeer)
		}
		return s.cfg.Source.Identify(r.Context(), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	if !cs.peer.IsValid() {
		return nil, fmt.Errorf("%w: connection without a peer address", identity.ErrUnknownPeer)
	}
	now := s.cfg.Now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.id != nil && now.Sub(cs.at) < s.cfg.IdentityCacheTTL {
		// The cached identity is only as good as the backend: if tailscaled
		// went away, answer 503 like an uncached request would.
		if c, ok := s.cfg.Source.(identity.Checker); ok {
			if err := c.Ready(r.Context()); err != nil {
				return nil, err
			}
		}
		return cs.id, nil
	}
	id, err := s.cfg.Source.Identify(r.Context(), cs.peer)
	if err != nil {
		cs.id = nil
		return nil, err
	}
	cs.id, cs.at = id, now
	return id, nil
}
