package etcdstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
	"github.com/tsidp/tsidp/pkg/session"
	"github.com/tsidp/tsidp/pkg/session/etcdstore"
	"github.com/tsidp/tsidp/pkg/session/sessiontest"
)

var prefixes atomic.Int64

func open(t *testing.T, c *etcdtest.Cluster, prefix string) *etcdstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := etcdstore.Config{Endpoints: c.Endpoints(), Prefix: prefix}.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestConformance runs the session store suite against a real etcd.
func TestConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	sessiontest.Run(t, func(t *testing.T) func() session.Store {
		prefix := fmt.Sprintf("/tsidp-test/%d/", prefixes.Add(1))
		return func() session.Store { return open(t, c, prefix) }
	})
}

// TestRecordsCarryLeases: etcd drops records by itself once they ended
// (plus session.Retention): each has a lease of about that length.
func TestRecordsCarryLeases(t *testing.T) {
	c := etcdtest.Start(t, 1)
	prefix := fmt.Sprintf("/tsidp-test/%d/", prefixes.Add(1))
	st := open(t, c, prefix)
	defer st.Close()
	ctx := context.Background()
	now := time.Now()
	if err := st.PutCode(ctx, session.HashOf("c"), &session.Code{ClientID: "app", Expires: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, prefix+"sessions/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("records: %v, %v", resp, err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	ttl, err := cli.TimeToLive(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	want := (time.Minute + session.Retention).Seconds()
	if float64(ttl.TTL) < want-60 || float64(ttl.TTL) > want+5 {
		t.Errorf("the code's lease has %ds left, want about %.0fs", ttl.TTL, want)
	}
}
