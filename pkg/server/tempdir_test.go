package server

import "os"

// newTempDir returns a directory for the shared test key store; the OS
// cleans /tmp, and sharing one manager keeps RSA key generation off every test.
func newTempDir() (string, error) { return os.MkdirTemp("", "tsidp-server-test-") }
