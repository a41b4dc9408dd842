package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// tokenHandler answers like tsidp. It is a stand-in for the unit tests of
// the client's own behaviour; the client against a real tsidp on a real
// tailnet is covered in integration/.
func tokenHandler(hits *atomic.Int64, dropSecond bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		if dropSecond && n == 2 {
			// The connection dies mid-request, as when tailscaled restarts
			// under a kept-alive connection.
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		if r.PostFormValue("audience") != "api" {
			w.WriteHeader(400)
			w.Write([]byte(`{"error":"invalid_target","error_description":"audience \"x\" is not configured"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600,"issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}`))
	})
}

func TestRetryOnDeadKeepAliveConnection(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(tokenHandler(&hits, true))
	defer srv.Close()
	c := &Client{URL: srv.URL, HTTPClient: srv.Client()}
	for i := 0; i < 2; i++ {
		if _, err := c.Token(context.Background(), Request{Audience: "api"}); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
	}
	if hits.Load() != 3 {
		t.Errorf("server saw %d requests, want 3 (one retried)", hits.Load())
	}
}

func TestErrorsAndCaching(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(tokenHandler(&hits, false))
	defer srv.Close()
	c := &Client{URL: srv.URL, HTTPClient: srv.Client()}
	_, err := c.Token(context.Background(), Request{Audience: "x"})
	var te *Error
	if !errors.As(err, &te) || te.Status != 400 || te.Code != "invalid_target" {
		t.Errorf("error = %v", err)
	}
	ts := &TokenSource{Client: c, Request: Request{Audience: "api", TTL: time.Hour}}
	for i := 0; i < 3; i++ {
		tok, err := ts.Token(context.Background())
		if err != nil || tok.AccessToken != "tok" || time.Until(tok.Expiry) < 59*time.Minute {
			t.Fatalf("%+v %v", tok, err)
		}
	}
	if hits.Load() != 2 { // the failed request and one fetch for the source
		t.Errorf("%d requests, want 2", hits.Load())
	}
}

// TestTokenSourceWaiterHonoursDeadline: a caller waiting behind another
// caller's slow fetch gives up when its own context ends, instead of
// waiting for the fetch it does not own; fetches still run one at a time.
func TestTokenSourceWaiterHonoursDeadline(t *testing.T) {
	var hits, inFlight, maxInFlight atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		hits.Add(1)
		// Slow: until released, or 3s at most, so that a client that makes
		// B wait for this fetch fails the test rather than hanging it.
		select {
		case <-release:
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600,"issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}`))
	}))
	defer srv.Close()
	ts := &TokenSource{Client: &Client{URL: srv.URL, HTTPClient: srv.Client()}, Request: Request{Audience: "api"}}

	// Caller A starts a fetch that hangs until released.
	aDone := make(chan error, 1)
	go func() {
		_, err := ts.Token(context.Background())
		aDone <- err
	}()
	for hits.Load() == 0 {
		time.Sleep(time.Millisecond)
	}

	// Caller B, with 200ms to spare, must not wait for A's fetch.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := ts.Token(ctx)
	if took := time.Since(start); took > time.Second {
		t.Errorf("caller B returned after %v, want about 200ms", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("caller B: err = %v, want context.DeadlineExceeded", err)
	}
	if hits.Load() != 1 {
		t.Errorf("%d fetches while A's was running, want 1", hits.Load())
	}

	// A's fetch completes and its token serves later callers.
	close(release)
	if err := <-aDone; err != nil {
		t.Fatalf("caller A: %v", err)
	}
	if tok, err := ts.Token(context.Background()); err != nil || tok.AccessToken != "tok" {
		t.Fatalf("after A's fetch: %+v, %v", tok, err)
	}
	if hits.Load() != 1 || maxInFlight.Load() != 1 {
		t.Errorf("fetches = %d, at most %d at once; want 1, 1", hits.Load(), maxInFlight.Load())
	}
}

// TestTokenSourceOneFetchAtATime: concurrent callers of an empty source
// share fetches rather than each sending one.
func TestTokenSourceOneFetchAtATime(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		time.Sleep(50 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600,"issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}`))
	}))
	defer srv.Close()
	ts := &TokenSource{Client: &Client{URL: srv.URL, HTTPClient: srv.Client()}, Request: Request{Audience: "api"}}
	errs := make(chan error, 10)
	for range 10 {
		go func() {
			_, err := ts.Token(context.Background())
			errs <- err
		}()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("10 concurrent callers made %d fetches, want 1", hits.Load())
	}
}

// TestTTLRoundedUp: a TTL that is not whole seconds is sent rounded up, so
// that under a second is "1", not "0" (which tsidp refuses).
func TestTTLRoundedUp(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.PostFormValue("ttl")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":1,"issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}`))
	}))
	defer srv.Close()
	c := &Client{URL: srv.URL, HTTPClient: srv.Client()}
	tests := []struct {
		ttl  time.Duration
		want string
	}{
		{0, ""},
		{time.Nanosecond, "1"},
		{500 * time.Millisecond, "1"},
		{time.Second, "1"},
		{1500 * time.Millisecond, "2"},
		{time.Minute, "60"},
		{time.Minute + time.Millisecond, "61"},
	}
	for _, tt := range tests {
		if _, err := c.Token(context.Background(), Request{Audience: "api", TTL: tt.ttl}); err != nil {
			t.Fatalf("TTL %v: %v", tt.ttl, err)
		}
		if g := <-got; g != tt.want {
			t.Errorf("TTL %v sent as ttl=%q, want %q", tt.ttl, g, tt.want)
		}
	}
}
