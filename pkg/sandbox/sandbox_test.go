package sandbox

import (
	"testing"
	"time"

	"tailscale.com/tsnet"

	"github.com/tsidp/tsidp/pkg/tailnet"
)

// TestCloseTwice: closing a sandbox twice returns both times, with the
// first call's result. (Closing its gateways a second time used to hang.)
// The sandbox here holds only gateways: Close's idempotence does not depend
// on the parts being started.
func TestCloseTwice(t *testing.T) {
	var gws [2]*tailnet.Gateway
	for i := range gws {
		g, err := tailnet.NewGateway("127.0.0.1:0", new(tsnet.Server), "http://tsidp")
		if err != nil {
			t.Fatal(err)
		}
		gws[i] = g
	}
	s := &Sandbox{Gateway: gws[0], TaggedGW: gws[1]}
	for i := range 2 {
		done := make(chan error, 1)
		go func() { done <- s.Close() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Close %d: %v", i+1, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Close %d did not return within 5s", i+1)
		}
	}
}
