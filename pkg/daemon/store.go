package daemon

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/metrics"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/server"
)

// openStore opens the key store the configuration names (see
// config.KeyStore). With etcd it fails within keys.etcd.dial_timeout if etcd
// does not answer.
func openStore(ctx context.Context, cfg *config.Config, logf logger.Logf) (keys.Store, error) {
	sc, err := cfg.KeyStore()
	if err != nil {
		return nil, err
	}
	st, err := sc.Open(ctx, keys.OpenOptions{Logf: logf})
	if err != nil {
		return nil, fmt.Errorf("daemon: key store: %w", err)
	}
	return st, nil
}

// storeHealthInterval is how often a replicated store's health is probed,
// and storeHealthTimeout the bound on one probe.
const (
	storeHealthInterval = time.Second
	storeHealthTimeout  = 2 * time.Second
)

// storeState runs what a key store needs beside the key Manager, as far
// as the store can do it: leader election for scheduled rotation (a
// keys.Elector), health probes (a keys.HealthChecker), and the readiness
// checks and metrics that report them.
type storeState struct {
	st       keys.Store
	elector  keys.Elector       // nil: no election, this process rotates
	health   keys.HealthChecker // nil: the store is always reachable
	election atomic.Pointer[keys.Election]
	keys     *keys.Manager
	logf     logger.Logf

	healthy    atomic.Bool
	downSince  atomic.Int64 // unix nanoseconds of the first failed probe; 0 when healthy
	failures   atomic.Int64 // failed probes
	mu         sync.Mutex
	lastErr    error // last probe error, nil when healthy
	stopHealth context.CancelFunc
}

func newStoreState(st keys.Store, logf logger.Logf) *storeState {
	s := &storeState{st: st, logf: logf}
	s.elector, _ = st.(keys.Elector)
	s.health, _ = st.(keys.HealthChecker)
	s.healthy.Store(true)
	return s
}

// managerOptions are the keys.Manager options for this store: with an
// election, only the elected leader runs scheduled rotation and pruning;
// without one, the one daemon does.
func (s *storeState) managerOptions() []keys.ManagerOption {
	if s.elector == nil {
		return nil
	}
	return []keys.ManagerOption{keys.WithShouldRotate(s.isLeader)}
}

func (s *storeState) isLeader() bool {
	if s.elector == nil {
		return true
	}
	e := s.election.Load()
	return e != nil && (*e).IsLeader()
}

// terms counts the times this process gained leadership.
func (s *storeState) terms() int64 {
	if e := s.election.Load(); e != nil {
		return (*e).Terms()
	}
	return 0
}

// start begins leader election and health probing, where the store has
// them, once the key Manager exists. Both stop when ctx is done; the
// election also stops (and resigns) when the store is closed.
func (s *storeState) start(ctx context.Context, m *keys.Manager, run func(func())) {
	s.keys = m
	if s.elector != nil {
		host, _ := os.Hostname()
		e := s.elector.Elect(keys.ElectionConfig{
			ID:   fmt.Sprintf("%s pid %d", host, os.Getpid()),
			Logf: s.logf,
			OnChange: func(leader bool) {
				if leader {
					m.Poke() // rotation may be overdue: the old leader died
				}
			},
		})
		s.election.Store(&e)
	}
	if s.health != nil {
		run(func() { s.probe(ctx) })
	}
}

// probe checks the store's health every storeHealthInterval until ctx is
// done, logs transitions, and reloads the key set when the store comes
// back (the watch catches up too; this bounds the delay).
func (s *storeState) probe(ctx context.Context) {
	t := time.NewTicker(storeHealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, storeHealthTimeout)
		err := s.health.Health(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.record(err)
	}
}

// record notes one probe result.
func (s *storeState) record(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
	was := s.healthy.Swap(err == nil)
	switch {
	case err != nil:
		s.failures.Add(1)
		if was {
			s.downSince.Store(time.Now().UnixNano())
			s.logf("daemon: key store unreachable; still signing and publishing key set version %d, no rotation until it is back: %v", s.keys.Version(), err)
		}
	case !was:
		down := time.Since(time.Unix(0, s.downSince.Load())).Round(time.Second)
		s.downSince.Store(0)
		s.logf("daemon: key store reachable again after %v", down)
		rctx, cancel := context.WithTimeout(context.Background(), storeHealthTimeout)
		if err := s.keys.Reload(rctx); err != nil {
			s.logf("daemon: reloading keys after the store came back: %v", err)
		}
		cancel()
	}
}

// check is the "store" readiness check and the admin API's store health:
// an error while the store is unreachable, went back to an older key set,
// or holds one this process refuses. Either way tokens are still issued
// with the keys in memory, so
// /readyz reports it as degraded, not as not ready.
func (s *storeState) check(context.Context) error {
	if !s.healthy.Load() {
		s.mu.Lock()
		err := s.lastErr
		s.mu.Unlock()
		down := time.Since(time.Unix(0, s.downSince.Load())).Round(time.Second)
		return fmt.Errorf("key store unreachable for %v (signing with key set version %d, rotation paused): %v", down, s.keys.Version(), err)
	}
	if err := s.keys.Regression(); err != nil {
		return err
	}
	if err := s.keys.Refusal(); err != nil {
		return err
	}
	return nil
}

// readyChecks are the key store's readiness checks. Both degrade but do
// not fail readiness: the keys in memory keep signing (docs/keys.md, "etcd
// unreachable").
func (s *storeState) readyChecks() []server.Check {
	return []server.Check{
		{Name: "store", Check: s.check, Degrades: true,
			Reason: "key store unreachable, or holding a key set this replica will not use; signing with the keys in memory"},
		{Name: "rotation", Check: s.rotationCheck, Degrades: true,
			Reason: "a scheduled key rotation is overdue; signing with the current keys"},
	}
}

// rotationCheck is the "rotation" readiness check: an error while a
// scheduled rotation is overdue (keys.Manager.RotationOverdue), such as
// when writing the rotated key set fails.
func (s *storeState) rotationCheck(context.Context) error {
	return s.keys.RotationOverdue(time.Now())
}

// overdueSeconds is how long the overdue rotation has been due, 0 if none
// is.
func (s *storeState) overdueSeconds() int64 {
	var oe *keys.OverdueError
	if errors.As(s.keys.RotationOverdue(time.Now()), &oe) {
		return int64(oe.Now.Sub(oe.Due).Seconds())
	}
	return 0
}

// Store metrics, published once per process under "tsidp_store" for the
// most recently started daemon (one per process outside tests).
var (
	storeMetricsOnce sync.Once
	currentStore     atomic.Pointer[storeState]
)

func publishStoreMetrics(s *storeState) {
	currentStore.Store(s)
	storeMetricsOnce.Do(func() {
		b2i := func(b bool) int64 {
			if b {
				return 1
			}
			return 0
		}
		get := func(f func(s *storeState) int64) expvar.Func {
			return func() any {
				if s := currentStore.Load(); s != nil && s.keys != nil {
					return f(s)
				}
				return int64(0)
			}
		}
		m := new(metrics.Set)
		// 1 while the store answers (always for a store without health
		// checks, such as the file store).
		m.Set("gauge_healthy", get(func(s *storeState) int64 { return b2i(s.healthy.Load()) }))
		// Seconds since the store stopped answering; 0 while it answers.
		m.Set("gauge_unreachable_seconds", get(func(s *storeState) int64 {
			if t := s.downSince.Load(); t != 0 {
				return int64(time.Since(time.Unix(0, t)).Seconds())
			}
			return 0
		}))
		m.Set("counter_health_failures", get(func(s *storeState) int64 { return s.failures.Load() }))
		// 1 if this process runs scheduled rotation: the elected leader
		// with a store that elects one (etcd), else always.
		m.Set("gauge_leader", get(func(s *storeState) int64 { return b2i(s.isLeader()) }))
		m.Set("counter_leader_terms", get(func(s *storeState) int64 { return s.terms() }))
		// The key set version this process signs with and publishes.
		m.Set("gauge_key_set_version", get(func(s *storeState) int64 { return s.keys.Version() }))
		// 1 while the store holds an older key set than the one in use.
		m.Set("gauge_regressed", get(func(s *storeState) int64 { return b2i(s.keys.Regression() != nil) }))
		// 1 while the store holds a key set this process refuses to use
		// (undecodable, not authenticated under the KEK, or incomplete).
		m.Set("gauge_refused", get(func(s *storeState) int64 { return b2i(s.keys.Refusal() != nil) }))
		// 1 while a scheduled key rotation is overdue: the last attempt
		// failed, or the leader has not rotated (see the "rotation" check).
		m.Set("gauge_rotation_overdue", get(func(s *storeState) int64 { return b2i(s.rotationCheck(context.Background()) != nil) }))
		// Seconds since the overdue rotation was due; 0 when none is.
		m.Set("gauge_rotation_overdue_seconds", get(func(s *storeState) int64 { return s.overdueSeconds() }))
		expvarPublish("tsidp_store", m)
	})
}
