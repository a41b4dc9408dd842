package etcdstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
)

// waitFor polls cond every 10 ms for up to bound and returns how long it
// took.
func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < bound {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", bound, what)
	return 0
}

type replica struct {
	st *etcdstore.Store
	el keys.Election
	mu sync.Mutex
	ch []bool // OnChange calls
}

func leaders(rs []*replica) (n int, who int) {
	who = -1
	for i, r := range rs {
		if r != nil && r.el.IsLeader() {
			n++
			who = i
		}
	}
	return n, who
}

// TestElection: of three replicas exactly one leads; a leader that closes
// (resigns) is replaced at once; a leader whose lease is revoked behind
// its back (as when it was partitioned away for the TTL) stops leading and
// another takes over within the TTL.
func TestElection(t *testing.T) {
	c := etcdtest.Start(t, 1)
	sl := newSealer(t)
	const ttl = 2 * time.Second
	rs := make([]*replica, 3)
	for i := range rs {
		r := &replica{st: openStoreWith(t, c, etcdstore.Config{Prefix: "/elect/", Sealer: sl, ElectionTTL: ttl})}
		r.el = r.st.Elect(keys.ElectionConfig{ID: fmt.Sprintf("replica-%d", i), Logf: t.Logf,
			OnChange: func(v bool) { r.mu.Lock(); r.ch = append(r.ch, v); r.mu.Unlock() }})
		rs[i] = r
	}
	waitFor(t, "a leader", 10*time.Second, func() bool { n, _ := leaders(rs); return n == 1 })
	// Stays exactly one for a while.
	for range 20 {
		if n, _ := leaders(rs); n != 1 {
			t.Fatalf("%d leaders", n)
		}
		time.Sleep(25 * time.Millisecond)
	}
	_, first := leaders(rs)
	if rs[first].el.Terms() != 1 {
		t.Errorf("leader has %d terms", rs[first].el.Terms())
	}
	// The announced value is visible to operators.
	resp, err := rs[first].st.Client().Get(testCtx(t), "/elect/leader/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 3 {
		t.Fatalf("election keys: %v, %d", err, len(resp.Kvs))
	}

	// Graceful: Close resigns; another replica leads well within the TTL.
	rs[first].el.Close()
	if rs[first].el.IsLeader() {
		t.Error("closed elector still leads")
	}
	d := waitFor(t, "a new leader after resignation", ttl, func() bool { n, w := leaders(rs); return n == 1 && w != first })
	t.Logf("failover after resignation: %v", d)
	rs[first].mu.Lock()
	if fmt.Sprint(rs[first].ch) != "[true false]" {
		t.Errorf("OnChange calls of the resigned leader: %v", rs[first].ch)
	}
	rs[first].mu.Unlock()
	rs[first] = nil

	// Ungraceful: revoke the leader's lease from outside, as etcd does when
	// a leader stops renewing (killed, partitioned).
	_, second := leaders(rs)
	resp, err = rs[second].st.Client().Get(testCtx(t), "/elect/leader/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("election keys: %v", err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	if string(resp.Kvs[0].Value) != fmt.Sprintf("replica-%d", second) {
		t.Fatalf("oldest election key is %q, leader is replica-%d", resp.Kvs[0].Value, second)
	}
	start := time.Now()
	if _, err := rs[second].st.Client().Revoke(testCtx(t), lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old leader to notice", ttl+2*time.Second, func() bool { return !rs[second].el.IsLeader() })
	waitFor(t, "another leader", ttl+2*time.Second, func() bool { n, w := leaders(rs); return n == 1 && w != second })
	t.Logf("failover after the leader's lease was revoked: %v", time.Since(start))
	// The replica that lost its lease campaigns again and may lead later;
	// there is never more than one leader.
	for range 40 {
		if n, _ := leaders(rs); n > 1 {
			t.Fatalf("%d leaders", n)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestOutage: a replica whose etcd member dies (a three-member cluster; the
// replica knows only that member) reports unhealthy, its operations fail
// within bounds, it stops leading within the TTL, and its watch stays open;
// meanwhile another replica writes through the other members. When the
// member comes back, health recovers, the watch delivers the missed change
// and the elector leads again.
func TestOutage(t *testing.T) {
	c := etcdtest.Start(t, 3)
	sl := newSealer(t)
	ctx := testCtx(t)
	const ttl = 2 * time.Second
	open := func(eps ...string) *etcdstore.Store {
		st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: eps, Prefix: "/outage/", Sealer: sl, ElectionTTL: ttl, Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	eps := c.Endpoints()
	st, other := open(eps[0]), open(eps[1], eps[2])
	initial, err := keys.Update(ctx, other, func(s *keys.Set) error { return s.Ensure(t0, policy(keys.ES256)) })
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ch := st.Watch(wctx)
	el := st.Elect(keys.ElectionConfig{ID: "cut-off", Logf: t.Logf})
	waitFor(t, "leadership", 10*time.Second, el.IsLeader)
	if err := st.Health(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the watch be established

	c.Members[0].Kill()
	start := time.Now()
	hctx, cancel := context.WithTimeout(ctx, time.Second)
	err = st.Health(hctx)
	cancel()
	if err == nil {
		t.Fatal("Health with its member down = nil")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Health took %v with a 1s bound", d)
	}
	t.Logf("health with its member down: %v", err)
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := st.Load(lctx); err == nil {
		t.Error("Load with its member down succeeded")
	}
	cancel()
	waitFor(t, "the leader to step down", ttl+3*time.Second, func() bool { return !el.IsLeader() })
	t.Logf("leader stepped down %v after its member died (TTL %v)", time.Since(start), ttl)

	// The rest of the cluster has quorum: another writer rotates.
	changed, err := keys.Update(ctx, other, func(s *keys.Set) error { return s.Rotate(t0.Add(time.Hour), policy(keys.ES256), keys.ES256, true) })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed during the outage")
		}
		// A signal is fine (the watch broke); what matters is below.
	default:
	}

	c.Members[0].Restart()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	var got *keys.Set
	d := waitFor(t, "the missed change to be signalled and loaded", 15*time.Second, func() bool {
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if got, err = st.Load(ctx); err == nil && got.Version == changed.Version {
				return true
			}
		default:
		}
		return false
	})
	t.Logf("caught up %v after the member was healthy (version %d → %d)", d, initial.Version, got.Version)
	if err := st.Health(ctx); err != nil {
		t.Error(err)
	}
	waitFor(t, "leadership again", 15*time.Second, el.IsLeader)
	if el.Terms() != 2 {
		t.Errorf("terms = %d, want 2", el.Terms())
	}
	_ = back

	// Close is bounded even with etcd down and an elector that leads.
	c.Members[0].Kill()
	start = time.Now()
	st.Close()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Close with etcd down took %v", d)
	}
	t.Logf("Close with its member down took %v", time.Since(start))
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed by Close")
		}
	}
}
