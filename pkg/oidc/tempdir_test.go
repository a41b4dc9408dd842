package oidc_test

import "os"

// tempDir makes a directory for state shared by every test of the package
// (one key manager: generating RSA keys per test is slow).
func tempDir() (string, error) { return os.MkdirTemp("", "tsidp-oidc-test-") }
