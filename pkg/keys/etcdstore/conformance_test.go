package etcdstore_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
	"github.com/tsidp/tsidp/pkg/keys/keystest"
)

var prefixes atomic.Int64

// newSealer returns a sealer under a fresh random KEK.
func newSealer(t testing.TB) keys.Sealer {
	t.Helper()
	kek := make([]byte, etcdstore.KEKSize)
	rand.Read(kek)
	sl, err := keys.NewAESGCMSealer(kek)
	if err != nil {
		t.Fatal(err)
	}
	return sl
}

// openStore opens a store on c under a prefix no other store of this test
// binary uses, so every store starts empty.
func openStore(t testing.TB, c *etcdtest.Cluster, sl keys.Sealer, prefix string) *etcdstore.Store {
	t.Helper()
	if prefix == "" {
		prefix = fmt.Sprintf("/tsidp-test/%d/", prefixes.Add(1))
	}
	return openStoreWith(t, c, etcdstore.Config{Prefix: prefix, Sealer: sl})
}

// openStoreWith opens a store on c with cfg, its endpoints and log added.
func openStoreWith(t testing.TB, c *etcdtest.Cluster, cfg etcdstore.Config) *etcdstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg.Endpoints, cfg.Logf = c.Endpoints(), t.Logf
	st, err := etcdstore.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestConformance runs the store conformance suite, unchanged, against a
// real etcd server.
func TestConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	sl := newSealer(t)
	keystest.RunStoreTests(t, func(t *testing.T) keys.Store { return openStore(t, c, sl, "") })
}
