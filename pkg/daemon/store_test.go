package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/tsweb/varz"

	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
)

func writeKEK(t *testing.T, dir string, mode os.FileMode) string {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	p := filepath.Join(dir, fmt.Sprintf("kek-%o", mode))
	if err := os.WriteFile(p, []byte(fmt.Sprintf("%x\n", k)), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
	return p
}

func etcdConfig(t *testing.T, c *etcdtest.Cluster, kek string) *config.Config {
	cfg := &config.Config{StateDir: t.TempDir()}
	cfg.Keys.Store = c.StoreURL()
	cfg.Keys.Etcd.KEKFile = kek
	cfg.Keys.Etcd.ElectionTTL = 3 * time.Second
	cfg.Keys.Etcd.DialTimeout = 2 * time.Second
	cfg.Provision()
	return cfg
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestOpenStoreEtcdTLS opens the etcd store from configuration as `serve`
// and the keys commands do: TLS with a client certificate, the KEK file,
// and the errors of each setting.
func TestOpenStoreEtcdTLS(t *testing.T) {
	dir := t.TempDir()
	pki := etcdtest.WritePKI(t, dir)
	tc, err := etcdstore.TLSFiles{CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}.Config()
	if err != nil {
		t.Fatal(err)
	}
	c := etcdtest.StartWith(t, etcdtest.Options{TLS: &etcdtest.TLSFiles{
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CA,
		HealthClient: httpsClient(tc),
	}})
	ctx := testCtx(t)
	cfg := etcdConfig(t, c, writeKEK(t, dir, 0o400))
	cfg.Keys.Etcd.CAFile, cfg.Keys.Etcd.CertFile, cfg.Keys.Etcd.KeyFile = pki.CA, pki.ClientCert, pki.ClientKey
	st, err := openStore(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p := keys.Policy{}
	p.Provision()
	if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(time.Now(), p) }); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		edit func(*config.Config)
		want string
	}{
		{"no KEK", func(c *config.Config) { c.Keys.Etcd.KEKFile = "" }, "kek_file (--kek-file) is required"},
		{"KEK readable by others", func(c *config.Config) { c.Keys.Etcd.KEKFile = writeKEK(t, dir, 0o644) }, "chmod 0400"},
		{"wrong KEK", func(c *config.Config) { c.Keys.Etcd.KEKFile = writeKEK(t, dir, 0o600) }, ""},
		{"no client certificate", func(c *config.Config) { c.Keys.Etcd.CertFile, c.Keys.Etcd.KeyFile = "", "" }, "did not answer within 2s"},
		{"plaintext", func(c *config.Config) { c.Keys.Etcd.CAFile, c.Keys.Etcd.CertFile, c.Keys.Etcd.KeyFile = "", "", "" }, "did not answer within 2s"},
	} {
		cfg := etcdConfig(t, c, cfg.Keys.Etcd.KEKFile)
		cfg.Keys.Etcd.CAFile, cfg.Keys.Etcd.CertFile, cfg.Keys.Etcd.KeyFile = pki.CA, pki.ClientCert, pki.ClientKey
		tc.edit(cfg)
		start := time.Now()
		st, err := openStore(ctx, cfg, nil)
		if tc.name == "wrong KEK" {
			// Opening works; reading the sealed keys does not.
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			_, err = st.Load(ctx)
			st.Close()
			tc.want = "wrong sealing key"
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), ": ") {
			t.Errorf("%s: %v; want an error containing %q", tc.name, err, tc.want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %v", tc.name, d)
		}
	}
}

// TestStoreStateEtcd runs what the daemon runs beside the key Manager on
// etcd: the elector (the only replica leads, so it may rotate), health
// probes feeding the "store" readiness check and the metrics, recovery
// when etcd returns, and the regression check when the stored set is
// deleted behind the daemon's back.
func TestStoreStateEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := testCtx(t)
	cfg := etcdConfig(t, c, writeKEK(t, t.TempDir(), 0o600))
	st, err := openStore(ctx, cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var logMu sync.Mutex
	var logs strings.Builder
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(&logs, format+"\n", args...)
		t.Logf(format, args...)
	}
	ss := newStoreState(st, logf)
	if ss.elector == nil || ss.health == nil || ss.isLeader() {
		t.Fatalf("elector %v, health checker %v, leader %v before start", ss.elector, ss.health, ss.isLeader())
	}
	p := keys.Policy{Algorithms: []keys.Algorithm{keys.ES256}}
	p.Provision()
	m, err := keys.NewManager(ctx, st, p, logf, ss.managerOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	goRun := func(f func()) { wg.Go(f) }
	ss.start(runCtx, m, goRun)
	goRun(func() { m.Run(runCtx) })
	publishStoreMetrics(ss)
	metrics := func() string {
		rec := httptest.NewRecorder()
		varz.Handler(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	waitFor := func(what string, bound time.Duration, cond func() bool) {
		t.Helper()
		for start := time.Now(); time.Since(start) < bound; time.Sleep(20 * time.Millisecond) {
			if cond() {
				return
			}
		}
		t.Fatalf("timed out after %v waiting for %s", bound, what)
	}
	waitFor("leadership", 10*time.Second, ss.isLeader)
	if err := ss.check(ctx); err != nil {
		t.Fatalf("check with etcd up: %v", err)
	}
	for _, want := range []string{"tsidp_store_healthy 1", "tsidp_store_leader 1", "tsidp_store_leader_terms 1", "tsidp_store_unreachable_seconds 0", fmt.Sprintf("tsidp_store_key_set_version %d", m.Version()), "tsidp_store_regressed 0"} {
		if !strings.Contains(metrics(), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, metrics())
		}
	}

	c.Members[0].Kill()
	waitFor("the store check to fail", 5*time.Second, func() bool { return ss.check(ctx) != nil })
	if err := ss.check(ctx); !strings.Contains(err.Error(), "key store unreachable for") || !strings.Contains(err.Error(), "rotation paused") {
		t.Errorf("check with etcd down: %v", err)
	}
	waitFor("the leader to step down", 3*time.Second+3*time.Second, func() bool { return !ss.isLeader() })
	if s := metrics(); !strings.Contains(s, "tsidp_store_healthy 0\n") || !strings.Contains(s, "tsidp_store_leader 0\n") {
		t.Errorf("metrics with etcd down:\n%s", s)
	}
	// Signing goes on.
	if _, _, err := m.Sign(nil, keys.ES256, []byte(`{}`)); err != nil {
		t.Errorf("Sign with etcd down: %v", err)
	}

	c.Members[0].Restart()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("the store check to pass", 10*time.Second, func() bool { return ss.check(ctx) == nil })
	waitFor("leadership again", 15*time.Second, ss.isLeader)
	logMu.Lock()
	l := logs.String()
	logMu.Unlock()
	for _, want := range []string{"key store unreachable; still signing", "key store reachable again after"} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q:\n%s", want, l)
		}
	}

	// Someone deletes the key set in etcd: the daemon keeps its keys and
	// the store check says why.
	v := m.Version()
	if _, err := st.(*etcdstore.Store).Client().Delete(ctx, st.(*etcdstore.Store).Key()); err != nil {
		t.Fatal(err)
	}
	waitFor("the regression to be reported", 10*time.Second, func() bool {
		err := ss.check(ctx)
		return err != nil && strings.Contains(err.Error(), "the key store is empty")
	})
	if m.Version() != v || !strings.Contains(metrics(), "tsidp_store_regressed 1\n") {
		t.Errorf("after the key was deleted: version %d (was %d), metrics:\n%s", m.Version(), v, metrics())
	}

	// Someone who can write to etcd but has no KEK plants a key set of
	// their own, with a higher version: the daemon neither publishes nor
	// signs with it, and the store check says so.
	planted := &keys.Set{Version: v + 10}
	if err := planted.Ensure(time.Now(), p); err != nil {
		t.Fatal(err)
	}
	doc, err := keys.MarshalSet(planted)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.(*etcdstore.Store).Client().Put(ctx, st.(*etcdstore.Store).Key(), string(doc)); err != nil {
		t.Fatal(err)
	}
	waitFor("the planted key set to be refused", 10*time.Second, func() bool {
		err := ss.check(ctx)
		return err != nil && strings.Contains(err.Error(), "refusing the stored key set") && strings.Contains(err.Error(), "not authenticated")
	})
	jwks, _ := m.JWKS()
	if plantedKid := planted.Active(keys.ES256).ID; m.Version() != v || strings.Contains(string(jwks), plantedKid) {
		t.Errorf("the planted key set was adopted: version %d (was %d), JWKS %s", m.Version(), v, jwks)
	}
	if !strings.Contains(metrics(), "tsidp_store_refused 1\n") {
		t.Errorf("metrics do not report the refused key set:\n%s", metrics())
	}
}

func httpsClient(tc *tls.Config) *http.Client {
	return &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// TestStoreStateFile: a store without the Elector and HealthChecker
// capabilities (the file store) has this process rotate on schedule and is
// never reported unreachable.
func TestStoreStateFile(t *testing.T) {
	st, err := filestore.Open(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ss := newStoreState(st, t.Logf)
	if ss.elector != nil || ss.health != nil || ss.managerOptions() != nil || !ss.isLeader() {
		t.Errorf("file store: elector %v, health %v, options %v, leader %v", ss.elector, ss.health, ss.managerOptions(), ss.isLeader())
	}
}
