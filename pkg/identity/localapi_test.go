package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
)

// TestWatchBackoffResetsAfterRunning: once a watch has seen tailscaled
// Running, the reconnect backoff starts over. It used to keep the 2s maximum
// reached during earlier outages, so after a few tailscaled restarts every
// restart cost 2s more of 503s.
//
// This is a unit test against a fake LocalAPI, with the waits recorded
// rather than slept: the integration tests restart a real tailscaled, but
// how long a restart takes cannot be controlled precisely enough there to
// observe the backoff.
func TestWatchBackoffResetsAfterRunning(t *testing.T) {
	// The fake answers the n-th watch (from 1): 1–8 and 10 fail, as while
	// tailscaled is down; 9 reports Running and then ends, as when
	// tailscaled restarts; 11 and later report Running and stay open.
	var watches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/localapi/v0/status":
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"BackendState":"Running","CurrentTailnet":{"Name":"example.com","MagicDNSSuffix":"tail1.ts.net"}}`))
		case "/localapi/v0/watch-ipn-bus":
			n := watches.Add(1)
			if n <= 8 || n == 10 {
				http.Error(w, "tailscaled is restarting", http.StatusServiceUnavailable)
				return
			}
			running := ipn.Running
			json.NewEncoder(w).Encode(ipn.Notify{State: &running})
			w.(http.Flusher).Flush()
			if n == 9 {
				return
			}
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	lc := &local.Client{
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", srv.Listener.Addr().String())
		},
		OmitAuth: true,
	}

	var mu sync.Mutex
	var waits []time.Duration
	s := newLocalAPI(lc, Rules{}, t.Logf, func(ctx context.Context, d time.Duration) bool {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err() == nil
	})
	defer s.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for watches.Load() < 11 {
		if ctx.Err() != nil {
			t.Fatalf("only %d watches within 10s", watches.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.WaitRunning(ctx); err != nil {
		t.Fatal(err)
	}
	ms := time.Millisecond
	want := []time.Duration{
		50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms, // tailscaled down
		50 * ms,  // after a watch that saw Running: start over
		100 * ms, // and grow again
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(waits, want) {
		t.Errorf("waits between watches = %v, want %v", waits, want)
	}
}

// TestUnreachableAtStartIsLogged: tsidp started without a reachable
// tailscaled says so once in its log, not only in answers to requests, and
// does not repeat it on every reconnection attempt.
func TestUnreachableAtStartIsLogged(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	attempts := make(chan struct{}, 100)
	lc := &local.Client{Socket: t.TempDir() + "/no-tailscaled.sock", UseSocketOnly: true}
	s := newLocalAPI(lc, Rules{}, func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}, func(ctx context.Context, d time.Duration) bool {
		select {
		case attempts <- struct{}{}:
		default:
		}
		return ctx.Err() == nil
	})
	defer s.Close()
	for range 5 {
		select {
		case <-attempts:
		case <-time.After(10 * time.Second):
			t.Fatal("the watcher did not retry within 10s")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var down int
	for _, l := range lines {
		if strings.Contains(l, "tailscaled not usable (answering 503 until it is): tailscaled unreachable") {
			down++
		}
	}
	if down != 1 {
		t.Errorf("after 5 failed attempts, %d log lines say tailscaled is unreachable, want 1:\n%s", down, strings.Join(lines, "\n"))
	}
}
