// Package integration holds tsidp's end-to-end tests: real tailnets on
// loopback (testcontrol with tsnet nodes and real tailscaled daemons), the
// built tsidp binary, and verifiers in other languages.
package integration

import (
	"os"
	"testing"
)

// shortTempDir returns a fresh directory with a short path: unix socket
// paths (the admin socket, tailscaled's) must stay under 104 bytes.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "tsidp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
