// Package httpsrv builds every http.Server tsidp runs: the issuer's
// endpoints, the admin socket, the metrics listener and the sandbox's
// gateways. One constructor means one set of limits to review; callers
// change only what their use needs, and the tests serve through the same
// configuration as production.
package httpsrv

import (
	"context"
	"net"
	"net/http"
	"time"
)

// Defaults bound what a peer can make a server hold: a slow or idle
// client cannot keep a connection or goroutine for long.
const (
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 10 * time.Second
	DefaultWriteTimeout      = 15 * time.Second
	DefaultIdleTimeout       = 90 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
)

// Options are what a server may change from the defaults. Zero fields take
// the defaults.
type Options struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// WriteTimeout bounds a request from the end of its headers to the
	// end of the answer; the admin API, which may generate RSA keys,
	// needs longer than the default.
	WriteTimeout   time.Duration
	IdleTimeout    time.Duration
	MaxHeaderBytes int
	// ConnContext, if set, adds per-connection values to the context
	// (the issuer caches a connection's identity there).
	ConnContext func(ctx context.Context, c net.Conn) context.Context
}

// New returns a server for h with the defaults, overridden by o.
func New(h http.Handler, o Options) *http.Server {
	pick := func(v, d time.Duration) time.Duration {
		if v == 0 {
			return d
		}
		return v
	}
	maxHeader := o.MaxHeaderBytes
	if maxHeader == 0 {
		maxHeader = DefaultMaxHeaderBytes
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: pick(o.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		ReadTimeout:       pick(o.ReadTimeout, DefaultReadTimeout),
		WriteTimeout:      pick(o.WriteTimeout, DefaultWriteTimeout),
		IdleTimeout:       pick(o.IdleTimeout, DefaultIdleTimeout),
		MaxHeaderBytes:    maxHeader,
		ConnContext:       o.ConnContext,
	}
}
