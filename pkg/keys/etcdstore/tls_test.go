package etcdstore_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, as PEM files in dir.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	otherCA                                          string // a CA that signed nothing here
}

func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(name, "PRIVATE KEY", der)
	}
	now := time.Now()
	mkCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, k, writePEM(name+".pem", "CERTIFICATE", der)
	}
	caCert, caKey, caFile := mkCA("ca")
	_, _, otherCA := mkCA("other-ca")
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(name+".pem", "CERTIFICATE", der), writeKey(name+"-key.pem", k)
	}
	sc, sk := leaf("server", 2, x509.ExtKeyUsageServerAuth)
	cc, ck := leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return pki{ca: caFile, serverCert: sc, serverKey: sk, clientCert: cc, clientKey: ck, otherCA: otherCA}
}

// TestTLS runs etcd with TLS and client-certificate authentication: the
// store works with the CA and a client certificate, and fails clearly
// without the certificate or with the wrong CA.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir)
	good := etcdstore.TLSFiles{CAFile: p.ca, CertFile: p.clientCert, KeyFile: p.clientKey}
	tc, err := good.Config()
	if err != nil {
		t.Fatal(err)
	}
	c := etcdtest.StartWith(t, etcdtest.Options{Members: 1, TLS: &etcdtest.TLSFiles{
		CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.ca,
		HealthClient: &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: tc}},
	}})
	ctx := testCtx(t)
	sl := newSealer(t)
	open := func(f etcdstore.TLSFiles, dial time.Duration) (*etcdstore.Store, error) {
		tc, err := f.Config()
		if err != nil {
			return nil, err
		}
		st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), TLS: tc, Sealer: sl, DialTimeout: dial})
		if err == nil {
			t.Cleanup(func() { st.Close() })
		}
		return st, err
	}
	st, err := open(good, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	set, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, policy(keys.ES256)) })
	if err != nil || set.Version != 1 {
		t.Fatalf("Update over TLS: %v", err)
	}

	for _, tc := range []struct {
		name string
		f    etcdstore.TLSFiles
		want string
	}{
		{"no client certificate", etcdstore.TLSFiles{CAFile: p.ca}, "did not answer"},
		{"wrong CA", etcdstore.TLSFiles{CAFile: p.otherCA, CertFile: p.clientCert, KeyFile: p.clientKey}, "did not answer"},
		{"cert without key", etcdstore.TLSFiles{CAFile: p.ca, CertFile: p.clientCert}, "both cert_file and key_file"},
		{"CA file is not PEM", etcdstore.TLSFiles{CAFile: p.clientKey + ".missing"}, "CA file"},
	} {
		_, err := open(tc.f, time.Second)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error containing %q", tc.name, err, tc.want)
		}
	}
	// Plaintext to a TLS cluster fails too.
	if _, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), Sealer: sl, DialTimeout: time.Second}); err == nil {
		t.Error("plaintext Open of a TLS cluster succeeded")
	}
	// An http:// endpoint with TLS configured is a contradiction.
	tcfg, _ := good.Config()
	if _, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: []string{"http://" + c.Endpoints()[0]}, TLS: tcfg, Sealer: sl}); err == nil || !strings.Contains(err.Error(), "TLS is on") {
		t.Errorf("http endpoint with TLS: %v", err)
	}
}
