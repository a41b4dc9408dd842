package etcdstore

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/keys"
)

// DefaultElectionTTL is the default election TTL: the longest a replica
// that dies without resigning (SIGKILL, power loss, network partition)
// keeps leadership before another replica takes over.
const DefaultElectionTTL = 10 * time.Second

// MinElectionTTL is the shortest election TTL accepted. The lease behind it
// is a second shorter (see Config.ElectionTTL), and etcd raises lease TTLs
// below its own minimum (1.5 × its election timeout, 2s with etcd's
// defaults) to that minimum.
const MinElectionTTL = 3 * time.Second

// expiryCheck is how often etcd looks for expired leases (500ms in etcd
// 3.4–3.6): a dead leader's lease is revoked up to that long after it
// expired. The lease TTL leaves a second for it.
const expiryCheck = time.Second

// Elector campaigns for leadership of the replicas sharing a Store, through
// an etcd election under <prefix>leader. At most one Elector of a prefix
// leads at a time, as far as etcd is concerned: leadership is a key bound
// to the leader's lease, which expires when the leader stops renewing it.
// A leader that cannot renew drops its leadership locally once the lease
// TTL has passed since the last renewal (the etcd client checks every
// 500ms), about when etcd lets another replica win; the two can overlap by
// up to about half a second. Callers that write under leadership must
// therefore still use compare-and-swap, as keys.Update does: leadership
// only avoids wasted work.
type Elector struct {
	s    *Store
	cfg  keys.ElectionConfig
	ttl  int // seconds
	logf logger.Logf

	leader atomic.Bool
	gained atomic.Int64 // times leadership was gained

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Bounds on the elector's etcd operations.
const (
	electOpTimeout     = 5 * time.Second
	electMinBackoff    = 200 * time.Millisecond
	electMaxBackoff    = 5 * time.Second
	electCloseWait     = 3 * time.Second
	electRevokeTimeout = 2 * time.Second
)

var _ keys.Election = (*Elector)(nil)

// Elect implements keys.Elector: it starts campaigning, with the store's
// ElectionTTL, and returns at once. The Elector stops, and resigns if it
// leads, on Close or when the Store is closed.
func (s *Store) Elect(cfg keys.ElectionConfig) keys.Election {
	if cfg.Logf == nil {
		cfg.Logf = s.logf
	}
	if cfg.ID == "" {
		cfg.ID = "tsidp"
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Elector{
		s:      s,
		cfg:    cfg,
		ttl:    leaseTTL(s.electTTL),
		logf:   cfg.Logf,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		cancel()
		close(e.done)
		return e
	}
	s.electors = append(s.electors, e)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(e.done)
		e.run(ctx)
	}()
	return e
}

// leaseTTL is the lease TTL, in seconds, for an election TTL.
func leaseTTL(ttl time.Duration) int {
	return max(int(math.Ceil((ttl - expiryCheck).Seconds())), 2)
}

// IsLeader reports whether this replica currently leads.
func (e *Elector) IsLeader() bool { return e.leader.Load() }

// Terms returns how many times this replica has gained leadership.
func (e *Elector) Terms() int64 { return e.gained.Load() }

// Close stops campaigning. A leader revokes its lease, so that another
// replica takes over at once instead of after the TTL. Close waits a few
// seconds at most: with etcd unreachable, the lease simply expires.
func (e *Elector) Close() {
	e.once.Do(func() {
		e.cancel()
		select {
		case <-e.done:
		case <-time.After(electCloseWait):
			// Still blocked on etcd; Store.Close closes the client,
			// which unblocks it.
		}
	})
}

func (e *Elector) run(ctx context.Context) {
	backoff := electMinBackoff
	var lastErr string
	for ctx.Err() == nil {
		led, err := e.term(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if msg := err.Error(); msg != lastErr {
				e.logf("etcdstore: leader election under %s: %v; retrying", e.key(), err)
				lastErr = msg
			}
		} else {
			lastErr = ""
		}
		if led {
			backoff = electMinBackoff
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, electMaxBackoff)
	}
}

func (e *Elector) key() string { return e.s.prefix + electionKeyName }

// term runs one election session: grant a lease, campaign, lead until the
// session ends or ctx is done, then give the lease up. led reports whether
// this replica led during the term.
func (e *Elector) term(ctx context.Context) (led bool, err error) {
	cli := e.s.cli
	gctx, cancel := context.WithTimeout(ctx, electOpTimeout)
	lease, err := cli.Grant(gctx, int64(e.ttl))
	cancel()
	if err != nil {
		return false, fmt.Errorf("granting a %ds lease: %w", e.ttl, err)
	}
	// The session's own context is not ctx: on shutdown we revoke the lease
	// ourselves, with a bound, instead of abandoning it to expire.
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(e.ttl), concurrency.WithContext(sctx))
	if err != nil {
		e.revoke(lease.ID)
		return false, fmt.Errorf("starting a session: %w", err)
	}
	defer func() {
		sess.Orphan()
		e.revoke(lease.ID)
	}()

	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	go func() {
		select {
		case <-sess.Done():
			ccancel()
		case <-cctx.Done():
		}
	}()
	el := concurrency.NewElection(sess, e.key())
	if err := el.Campaign(cctx, e.cfg.ID); err != nil {
		if ctx.Err() == nil {
			select {
			case <-sess.Done():
				return false, fmt.Errorf("session lease %x lost while campaigning", lease.ID)
			default:
			}
		}
		return false, fmt.Errorf("campaigning: %w", err)
	}
	select {
	case <-sess.Done():
		return false, fmt.Errorf("session lease %x lost right after winning", lease.ID)
	default:
	}
	e.setLeader(true)
	e.logf("etcdstore: this replica (%s) now leads %s", e.cfg.ID, e.key())
	select {
	case <-sess.Done():
		e.setLeader(false)
		e.logf("etcdstore: this replica (%s) lost leadership of %s: its lease was not renewed for %ds", e.cfg.ID, e.key(), e.ttl)
		return true, nil
	case <-ctx.Done():
		e.setLeader(false)
		e.logf("etcdstore: this replica (%s) resigns leadership of %s", e.cfg.ID, e.key())
		return true, nil
	}
}

// revoke gives the lease up, which deletes the election key bound to it.
func (e *Elector) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), electRevokeTimeout)
	defer cancel()
	e.s.cli.Revoke(ctx, id) // on failure the lease expires by itself
}

func (e *Elector) setLeader(v bool) {
	if e.leader.Swap(v) == v {
		return
	}
	if v {
		e.gained.Add(1)
	}
	if e.cfg.OnChange != nil {
		e.cfg.OnChange(v)
	}
}
