package tailnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

func TestDialWithRetry(t *testing.T) {
	var calls atomic.Int32
	stallOnce := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done() // the stalled dial
			return nil, ctx.Err()
		}
		c1, c2 := net.Pipe()
		c2.Close()
		return c1, nil
	}
	t0 := time.Now()
	c, err := dialWithRetry(context.Background(), stallOnce, 50*time.Millisecond, "tcp", "idp:80")
	if err != nil {
		t.Fatalf("dialWithRetry: %v", err)
	}
	c.Close()
	if n := calls.Load(); n != 2 {
		t.Errorf("dial attempts = %d, want 2", n)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("took %v", d)
	}

	calls.Store(0)
	failing := func(ctx context.Context, network, addr string) (net.Conn, error) {
		calls.Add(1)
		return nil, errors.New("boom")
	}
	_, err = dialWithRetry(context.Background(), failing, time.Second, "tcp", "idp:80")
	var de *dialError
	if !errors.As(err, &de) || calls.Load() != 2 {
		t.Errorf("err = %v (dialError: %v), attempts = %d; want dialError after 2", err, errors.As(err, &de), calls.Load())
	}

	// A caller that gave up is not retried.
	calls.Store(0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dialWithRetry(ctx, failing, time.Second, "tcp", "idp:80")
	if n := calls.Load(); n != 1 {
		t.Errorf("attempts with a cancelled context = %d, want 1", n)
	}
}

type fakeRT struct {
	calls  int
	bodies []string
	errs   []error
}

func (f *fakeRT) RoundTrip(req *http.Request) (*http.Response, error) {
	f.calls++
	if req.Body != nil {
		b, _ := io.ReadAll(req.Body)
		f.bodies = append(f.bodies, string(b))
	}
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		if err != nil {
			return nil, err
		}
	}
	return &http.Response{StatusCode: 200, Body: http.NoBody, Request: req}, nil
}

func TestRetryTransport(t *testing.T) {
	stalled := errors.New("net/http: timeout awaiting response headers")
	newReq := func(method, body string) *http.Request {
		req, _ := http.NewRequest(method, "http://idp/", bytes.NewReader([]byte(body)))
		if body == "" {
			req.Body = http.NoBody
		}
		return req
	}

	f := &fakeRT{errs: []error{stalled}}
	if _, err := (retryTransport{f}).RoundTrip(newReq("GET", "")); err != nil || f.calls != 2 {
		t.Errorf("GET after a stall: err=%v calls=%d, want success on the 2nd attempt", err, f.calls)
	}

	f = &fakeRT{errs: []error{stalled}}
	if _, err := (retryTransport{f}).RoundTrip(newReq("POST", "audience=x")); err == nil || f.calls != 1 {
		t.Errorf("POST after a stall: err=%v calls=%d, want no retry", err, f.calls)
	}

	f = &fakeRT{errs: []error{stalled}}
	req := newReq("PUT", "payload")
	req.Header.Set("Idempotency-Key", "k1")
	if _, err := (retryTransport{f}).RoundTrip(req); err != nil || f.calls != 2 || f.bodies[1] != "payload" {
		t.Errorf("idempotent PUT: err=%v calls=%d bodies=%q, want the body replayed", err, f.calls, f.bodies)
	}

	f = &fakeRT{errs: []error{&dialError{errors.New("dial stalled twice")}}}
	if _, err := (retryTransport{f}).RoundTrip(newReq("GET", "")); err == nil || f.calls != 1 {
		t.Errorf("dial failure: err=%v calls=%d, want no further retry", err, f.calls)
	}
}
