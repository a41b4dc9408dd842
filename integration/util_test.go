// Package integration holds tsidp's end-to-end tests: real tailnets on
// loopback (testcontrol with tsnet nodes and real tailscaled daemons), the
// built tsidp binary, and verifiers in other languages.
package integration

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
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

// httpClient is a plain client with a bound on every request.
func httpClient() *http.Client { return &http.Client{Timeout: 15 * time.Second} }

// kidOf returns the kid in a compact JWS's header, without verifying it.
func kidOf(t testing.TB, token string) string {
	t.Helper()
	h, _, ok := strings.Cut(token, ".")
	if !ok {
		t.Fatalf("not a JWS: %q", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(b, &hdr); err != nil || hdr.KID == "" {
		t.Fatalf("header %s: %v", b, err)
	}
	return hdr.KID
}
