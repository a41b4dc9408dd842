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

// Identifier identifies the caller of a request by its connection: the
// peer address, asked of an identity.Source once per connection and reused
// for a bounded time. Every endpoint that needs the caller (the token
// endpoint, the OpenID Provider's pages) uses the same one.
type Identifier struct {
	src identity.Source
	ttl time.Duration
	now func() time.Time
}

// NewIdentifier returns an Identifier over src that reuses a connection's
// identity for ttl (0: 5s; see Config.IdentityCacheTTL). now may be nil.
func NewIdentifier(src identity.Source, ttl time.Duration, now func() time.Time) *Identifier {
	if ttl == 0 {
		ttl = 5 * time.Second
	}
	if now == nil {
		now = time.Now
	}
	return &Identifier{src: src, ttl: ttl, now: now}
}

// Source returns the identity source.
func (i *Identifier) Source() identity.Source { return i.src }

// Identify returns the caller's identity, from the connection cache when
// it is fresh and the backend is still ready. Behind a server that did not
// set up the connection (httptest), it asks about r.RemoteAddr.
func (i *Identifier) Identify(r *http.Request) (*identity.Identity, error) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	if cs == nil {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			return nil, fmt.Errorf("%w: unparsable peer address", identity.ErrUnknownPeer)
		}
		return i.src.Identify(r.Context(), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	if !cs.peer.IsValid() {
		return nil, fmt.Errorf("%w: connection without a peer address", identity.ErrUnknownPeer)
	}
	now := i.now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.id != nil && now.Sub(cs.at) < i.ttl {
		// The cached identity is only as good as the backend: if tailscaled
		// went away, answer 503 like an uncached request would.
		if c, ok := i.src.(identity.Checker); ok {
			if err := c.Ready(r.Context()); err != nil {
				return nil, err
			}
		}
		return cs.id, nil
	}
	id, err := i.src.Identify(r.Context(), cs.peer)
	if err != nil {
		cs.id = nil
		return nil, err
	}
	cs.id, cs.at = id, now
	return id, nil
}
