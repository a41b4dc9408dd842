// Package client fetches tokens from tsidp. On a tailnet, the connection
// itself is the credential: there is no secret to configure.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Client requests tokens from one tsidp.
type Client struct {
	// URL is tsidp's base URL (the issuer), e.g. "http://tsidp.tail1234.ts.net".
	URL string
	// HTTPClient sends the requests; nil means a client with a 30s timeout.
	// With tsnet, pass the node's HTTPClient().
	HTTPClient *http.Client
}

// Request is a token request.
type Request struct {
	Audience string
	Scope    string // space-separated, optional
	// TTL is the lifetime to ask for, optional. It is sent in whole
	// seconds, rounded up; tsidp clamps it to the audience's maximum.
	TTL time.Duration
}

// Token is a successful answer.
type Token struct {
	AccessToken     string    `json:"access_token"`
	TokenType       string    `json:"token_type"`
	ExpiresIn       int64     `json:"expires_in"`
	IssuedTokenType string    `json:"issued_token_type"`
	Scope           string    `json:"scope,omitempty"`
	Expiry          time.Time `json:"-"`
}

// Error is an RFC 6749 error answer.
type Error struct {
	Status      int    `json:"-"`
	Code        string `json:"error"`
	Description string `json:"error_description"`
}

func (e *Error) Error() string {
	if e.Description == "" {
		return fmt.Sprintf("client: %s (HTTP %d)", e.Code, e.Status)
	}
	return fmt.Sprintf("client: %s: %s (HTTP %d)", e.Code, e.Description, e.Status)
}

// Token asks for a token.
func (c *Client) Token(ctx context.Context, r Request) (*Token, error) {
	if r.Audience == "" {
		return nil, errors.New("client: an audience is required")
	}
	form := url.Values{"grant_type": {"client_credentials"}, "audience": {r.Audience}}
	if r.Scope != "" {
		form.Set("scope", r.Scope)
	}
	if r.TTL > 0 {
		// Round up: truncating would send "0" for anything under a second,
		// which tsidp refuses.
		secs := (r.TTL + time.Second - 1) / time.Second
		form.Set("ttl", strconv.FormatInt(int64(secs), 10))
	}
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimSuffix(c.URL, "/")+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// Asking twice for a token is harmless, so mark the request idempotent:
	// net/http then retries it once on a fresh connection when a kept-alive
	// one turns out to be dead (as after a tailscaled restart). A nil value
	// is not sent.
	req.Header["Idempotency-Key"] = nil
	hc := c.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	start := time.Now()
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("client: reading answer: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		e := &Error{Status: res.StatusCode}
		if json.Unmarshal(body, e) != nil || e.Code == "" {
			e.Code = "http_error"
			e.Description = strings.TrimSpace(string(body[:min(len(body), 200)]))
		}
		return nil, e
	}
	var t Token
	if err := json.Unmarshal(body, &t); err != nil || t.AccessToken == "" {
		return nil, fmt.Errorf("client: malformed token answer")
	}
	t.Expiry = start.Add(time.Duration(t.ExpiresIn) * time.Second)
	return &t, nil
}

// TokenSource returns cached tokens for one request, fetching a new one when
// the cached one has less than a fifth of its lifetime (at most a minute) left.
// It is safe for concurrent use; concurrent callers share one fetch.
type TokenSource struct {
	Client  *Client
	Request Request

	initOnce sync.Once
	// fetching holds a value while a fetch runs. A channel rather than a
	// mutex, so that a caller waiting for another caller's fetch can give
	// up when its own context ends.
	fetching chan struct{}

	mu  sync.Mutex // guards tok
	tok *Token
}

// Token returns a valid token. Only one fetch runs at a time; a caller that
// waits for it returns the context's error, wrapped, if ctx ends first.
func (s *TokenSource) Token(ctx context.Context) (*Token, error) {
	if t := s.cached(); t != nil {
		return t, nil
	}
	s.initOnce.Do(func() { s.fetching = make(chan struct{}, 1) })
	select {
	case s.fetching <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("client: waiting for a token: %w", ctx.Err())
	}
	defer func() { <-s.fetching }()
	// The fetch we waited for may have left a fresh token.
	if t := s.cached(); t != nil {
		return t, nil
	}
	t, err := s.Client.Token(ctx, s.Request)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.tok = t
	s.mu.Unlock()
	return t, nil
}

// cached returns the cached token if it is not due for renewal, or nil.
func (s *TokenSource) cached() *Token {
	s.mu.Lock()
	t := s.tok
	s.mu.Unlock()
	if t == nil {
		return nil
	}
	life := time.Duration(t.ExpiresIn) * time.Second
	margin := min(life/5, time.Minute)
	if time.Until(t.Expiry) > margin {
		return t
	}
	return nil
}
