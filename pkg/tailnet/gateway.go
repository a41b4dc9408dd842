package tailnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tsidp/tsidp/internal/httpsrv"
	"tailscale.com/tsnet"
)

// Gateway limits. A gateway fronts small API requests (token requests,
// discovery documents, JWKS); anything bigger or slower is a bug or abuse.
const (
	// GatewayMaxBodyBytes is the largest request body a Gateway forwards.
	GatewayMaxBodyBytes = 1 << 20
	// GatewayRequestTimeout bounds one request end to end, retry included.
	GatewayRequestTimeout = 30 * time.Second

	// gatewayDialTimeout bounds one tailnet dial attempt. Dials on loopback
	// take milliseconds once the nodes have a home DERP; a dial that takes
	// longer has stalled (seen about once in 400 dials when the server had
	// closed the previous connection first) and is retried once.
	gatewayDialTimeout = 3 * time.Second
	// gatewayHeaderTimeout bounds the wait for upstream response headers.
	gatewayHeaderTimeout = 10 * time.Second
)

// Gateway exposes a tailnet HTTP service on a loopback address: it accepts
// plain HTTP and forwards every request, through a tailnet node's Dial, to a
// target such as "http://tsidp:80".
//
// The upstream sees the connection as coming from the via node, so anyone
// who can reach the gateway's address acts as that node. That is why it
// only listens on loopback. Client-supplied forwarding and Tailscale
// identity headers are dropped: identity comes from the tailnet connection
// only.
type Gateway struct {
	ln     net.Listener
	srv    *http.Server
	tr     *http.Transport
	url    string
	served chan error

	closeOnce sync.Once
	closeErr  error
}

// NewGateway starts a gateway listening on listenAddr (a loopback host:port,
// port 0 picks one) that forwards to target through via. target is an http
// or https URL whose host is a tailnet name or IP, optionally with a path
// prefix.
func NewGateway(listenAddr string, via *tsnet.Server, target string) (*Gateway, error) {
	if via == nil {
		return nil, errors.New("tailnet: gateway needs a node to dial through")
	}
	if err := checkLoopback(listenAddr); err != nil {
		return nil, fmt.Errorf("tailnet: gateway listen address: %w", err)
	}
	tu, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("tailnet: gateway target: %w", err)
	}
	if (tu.Scheme != "http" && tu.Scheme != "https") || tu.Host == "" || tu.User != nil || tu.RawQuery != "" || tu.Fragment != "" {
		return nil, fmt.Errorf("tailnet: gateway target %q must be http(s)://host[:port][/path]", target)
	}

	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialWithRetry(ctx, via.Dial, gatewayDialTimeout, network, addr)
		},
		ResponseHeaderTimeout: gatewayHeaderTimeout,
		TLSHandshakeTimeout:   gatewayDialTimeout,
		IdleConnTimeout:       30 * time.Second,
		// Keep enough idle connections for a busy client: below its
		// concurrency, every request beyond the pool opens a new tailnet
		// connection and leaves another TIME_WAIT endpoint in netstack.
		MaxIdleConnsPerHost: 256,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Rewrite (unlike Director) already drops Forwarded and
			// X-Forwarded-* from the inbound request; SetURL also sets
			// Host to the target's.
			pr.SetURL(tu)
			stripIdentityHeaders(pr.Out.Header)
			// bufferBody has read the body, and with it answered the
			// client's "Expect: 100-continue"; passed on, the upstream's
			// own 100 Continue would reach the client as a second one.
			pr.Out.Header.Del("Expect")
		},
		Transport: retryTransport{tr},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status := http.StatusBadGateway
			if errors.Is(err, context.DeadlineExceeded) {
				status = http.StatusGatewayTimeout
			}
			http.Error(w, "tailnet gateway: upstream request failed", status)
		},
	}

	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("tailnet: gateway listen: %w", err)
	}
	g := &Gateway{
		ln:     ln,
		tr:     tr,
		url:    "http://" + ln.Addr().String(),
		served: make(chan error, 1),
	}
	g.srv = httpsrv.New(bufferBody(rp), httpsrv.Options{
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       GatewayRequestTimeout,
		WriteTimeout:      GatewayRequestTimeout + 5*time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	})
	go func() { g.served <- g.srv.Serve(ln) }()
	return g, nil
}

// URL returns the gateway's base URL, e.g. "http://127.0.0.1:40123".
func (g *Gateway) URL() string { return g.url }

// Close stops the gateway, dropping in-flight requests. Calling it again
// returns what the first call returned.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		err := g.srv.Close()
		<-g.served
		g.tr.CloseIdleConnections()
		if err != nil {
			g.closeErr = fmt.Errorf("tailnet: closing gateway: %w", err)
		}
	})
	return g.closeErr
}

// stripIdentityHeaders removes request headers that some servers trust as
// caller identity. tsidp ignores them anyway; removing them keeps a client of
// the gateway from even trying to look like someone else.
func stripIdentityHeaders(h http.Header) {
	for k := range h {
		lk := strings.ToLower(k)
		switch {
		case strings.HasPrefix(lk, "tailscale-"), strings.HasPrefix(lk, "x-tailscale-"),
			strings.HasPrefix(lk, "x-forwarded-"), lk == "forwarded",
			lk == "x-real-ip", lk == "x-client-ip", lk == "true-client-ip",
			lk == "x-remote-user", lk == "remote-user", lk == "x-webauth-user",
			lk == "proxy-authorization":
			delete(h, k)
		}
	}
}

// bufferBody reads the (bounded) request body into memory before proxying,
// so that a request can be replayed if the first attempt never reached the
// upstream, and bounds the whole request's time.
func bufferBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), GatewayRequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		if r.Body != nil && r.Body != http.NoBody {
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, GatewayMaxBodyBytes))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					http.Error(w, "tailnet gateway: request body too large", http.StatusRequestEntityTooLarge)
				} else {
					http.Error(w, "tailnet gateway: reading request body failed", http.StatusBadRequest)
				}
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
			r.ContentLength = int64(len(b))
			r.TransferEncoding = nil
			r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		}
		next.ServeHTTP(w, r)
	})
}

// dialError marks a failure to connect: the request was not sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// dialWithRetry dials addr with a per-attempt timeout and tries once more if
// the first attempt fails while the caller is still waiting.
func dialWithRetry(ctx context.Context, dial dialFunc, timeout time.Duration, network, addr string) (net.Conn, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		var c net.Conn
		c, err = dial(dctx, network, addr)
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, &dialError{fmt.Errorf("tailnet: gateway dial %s: %w", addr, err)}
}

// retryTransport retries a request once when the first attempt timed out
// waiting for response headers or lost its connection, provided the request
// is idempotent and its body can be replayed. Dial failures are already
// retried by dialWithRetry.
type retryTransport struct{ base http.RoundTripper }

func (rt retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := rt.base.RoundTrip(req)
	if err == nil || req.Context().Err() != nil || !idempotent(req) {
		return res, err
	}
	var de *dialError
	if errors.As(err, &de) {
		return nil, err
	}
	req2 := req.Clone(req.Context())
	if req.Body != nil && req.Body != http.NoBody {
		if req.GetBody == nil {
			return nil, err
		}
		body, gerr := req.GetBody()
		if gerr != nil {
			return nil, err
		}
		req2.Body = body
	}
	return rt.base.RoundTrip(req2)
}

func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return r.Header.Get("Idempotency-Key") != ""
}
