package httpsrv

import (
	"net/http"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	h := http.NotFoundHandler()
	d := New(h, Options{})
	if d.ReadHeaderTimeout != DefaultReadHeaderTimeout || d.ReadTimeout != DefaultReadTimeout ||
		d.WriteTimeout != DefaultWriteTimeout || d.IdleTimeout != DefaultIdleTimeout || d.MaxHeaderBytes != DefaultMaxHeaderBytes {
		t.Errorf("defaults not applied: %+v", d)
	}
	o := New(h, Options{WriteTimeout: 90 * time.Second, MaxHeaderBytes: 1 << 10})
	if o.WriteTimeout != 90*time.Second || o.MaxHeaderBytes != 1<<10 || o.ReadHeaderTimeout != DefaultReadHeaderTimeout {
		t.Errorf("overrides: %+v", o)
	}
	// Every server is bounded: no zero (unlimited) timeout.
	for _, s := range []*http.Server{d, o} {
		if s.ReadHeaderTimeout == 0 || s.ReadTimeout == 0 || s.WriteTimeout == 0 || s.IdleTimeout == 0 {
			t.Errorf("an unbounded timeout: %+v", s)
		}
	}
}
