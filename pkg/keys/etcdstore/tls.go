package etcdstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles name the PEM files of a TLS connection to etcd. All empty means
// plaintext.
type TLSFiles struct {
	// CAFile holds the CA certificates that sign the etcd members'
	// certificates. Empty: the system roots.
	CAFile string
	// CertFile and KeyFile hold the client certificate and key, for
	// clusters started with --client-cert-auth. Both or neither.
	CertFile, KeyFile string
}

// Enabled reports whether any TLS file is set.
func (f TLSFiles) Enabled() bool { return f.CAFile != "" || f.CertFile != "" || f.KeyFile != "" }

// Config loads the files into a TLS client configuration; nil if none is
// set.
func (f TLSFiles) Config() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("etcdstore: TLS client certificate and key go together: set both cert_file and key_file, or neither")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcdstore: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcdstore: CA file %s holds no PEM certificate", f.CAFile)
		}
		cfg.RootCAs = pool
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			// The error names the files and the problem, never key bytes.
			return nil, fmt.Errorf("etcdstore: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
