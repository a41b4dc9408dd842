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
