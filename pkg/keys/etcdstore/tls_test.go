package etcdstore_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
)

// TestTLS runs etcd with TLS and client-certificate authentication: the
// store works with the CA and a client certificate, and fails clearly
// without the certificate or with the wrong CA.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	p := etcdtest.WritePKI(t, dir)
	good := etcdstore.TLSFiles{CAFile: p.CA, CertFile: p.ClientCert, KeyFile: p.ClientKey}
	tc, err := good.Config()
	if err != nil {
		t.Fatal(err)
	}
	c := etcdtest.StartWith(t, etcdtest.Options{Members: 1, TLS: &etcdtest.TLSFiles{
		CertFile: p.ServerCert, KeyFile: p.ServerKey, ClientCAFile: p.CA,
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
		{"no client certificate", etcdstore.TLSFiles{CAFile: p.CA}, "did not answer"},
		{"wrong CA", etcdstore.TLSFiles{CAFile: p.OtherCA, CertFile: p.ClientCert, KeyFile: p.ClientKey}, "did not answer"},
		{"cert without key", etcdstore.TLSFiles{CAFile: p.CA, CertFile: p.ClientCert}, "both cert_file and key_file"},
		{"CA file is not PEM", etcdstore.TLSFiles{CAFile: p.ClientKey + ".missing"}, "CA file"},
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
