package keys

import (
	"context"
	"fmt"
	"time"

	"github.com/tsidp/tsidp/internal/duration"
)

// Run performs background work until ctx is done: scheduled rotation once
// an active key has signed for RotationPeriod (and its successor has been
// published long enough), pruning of expired retired keys and old
// tombstones, and reloading when the store reports a change (stores
// without Watcher are re-read every tick instead). Writes happen only while
// the WithShouldRotate function, if any, reports true; call Poke when it
// turns true so that overdue work happens at once. Run wakes when the next
// rotation or pruning is due, and at least every tick (a minute). Every
// store operation is bounded by a timeout; failures are logged and retried
// on the next tick.
func (m *Manager) Run(ctx context.Context) {
	var changed <-chan struct{}
	if w, ok := m.st.(Watcher); ok {
		changed = w.Watch(ctx)
	}
	watching := changed != nil
	m.maintain(ctx)
	t := time.NewTimer(m.wait())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changed:
			if !ok {
				changed, watching = nil, false // fall back to polling
				continue
			}
			m.reload(ctx)
		case <-m.poke:
		case <-t.C:
			if !watching {
				m.reload(ctx)
			}
		}
		m.maintain(ctx) // no I/O unless something is due
		t.Reset(m.wait())
	}
}

// Poke makes Run check for due rotation and pruning now rather than at its
// next wake-up: call it when the WithShouldRotate function turns true.
func (m *Manager) Poke() {
	select {
	case m.poke <- struct{}{}:
	default: // a poke is pending
	}
}

// wait returns how long Run sleeps: until the next rotation or pruning is
// due if this Manager may write and that comes before the next tick, else
// a tick. Run has just called maintain, so work that is still overdue could
// not be done (not allowed, or the store failed) and waits for the tick or
// a Poke.
func (m *Manager) wait() time.Duration {
	d := m.tick
	if !m.shouldRotate() {
		return d
	}
	if t, ok := m.nextDue(m.cur.Load().set); ok {
		if w := t.Sub(m.now()); w > 0 && w < d {
			d = w
		}
	}
	return d
}

// nextDue returns the earliest time scheduled rotation or pruning has work
// in s.
func (m *Manager) nextDue(s *Set) (t time.Time, ok bool) {
	consider := func(x time.Time) {
		if !ok || x.Before(t) {
			t, ok = x, true
		}
	}
	for _, alg := range m.p.Algorithms {
		if r, due := nextRotation(s, alg, m.p); due {
			consider(r)
		}
	}
	for _, k := range s.Keys {
		switch k.State {
		case StateRetired:
			consider(k.removeAt(m.p))
		case StateRevoked:
			consider(k.Revoked.Add(RevokedRetention))
		}
	}
	return t, ok
}

func (m *Manager) reload(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, m.opTimeout)
	defer cancel()
	if err := m.Reload(ctx); err != nil && ctx.Err() == nil {
		m.logf("keys: reloading the key set (still using version %d): %s", m.Version(), unprefixed(err))
	}
}

// maintain rotates and prunes if anything is due. It decides from the
// in-memory set, so an idle tick costs no I/O, and re-decides on the
// freshly loaded set inside Update, so replicas racing without a leader
// do not rotate twice.
func (m *Manager) maintain(ctx context.Context) {
	if !m.shouldRotate() || !m.needsWork(m.cur.Load().set, m.now().UTC()) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, m.opTimeout)
	defer cancel()
	_, err := m.update(ctx, func(s *Set, now time.Time) error {
		if err := s.Ensure(now, m.p); err != nil {
			return err
		}
		for _, alg := range m.p.Algorithms {
			if m.rotationDue(s, alg, now) {
				if err := s.Rotate(now, m.p, alg, false); err != nil {
					return err
				}
			}
		}
		s.Prune(now, m.p)
		return nil
	})
	if err != nil && ctx.Err() == nil {
		m.maintFailed.Store(&err)
		m.logf("keys: scheduled key maintenance failed, will retry: %s", unprefixed(err))
	}
}

// OverdueError reports a scheduled rotation that is due and has not
// happened.
type OverdueError struct {
	Algorithm Algorithm
	Due       time.Time // when scheduled rotation was due
	Now       time.Time
	// Cause is why this process's last attempt failed (a full disk, an
	// unwritable store); nil when this process does not rotate (another
	// replica leads) and the one that does has not done it.
	Cause error
}

func (e *OverdueError) Error() string {
	s := fmt.Sprintf("keys: scheduled rotation of %s is overdue: due since %s (%s ago)",
		e.Algorithm, e.Due.Format(time.RFC3339), duration.Format(e.Now.Sub(e.Due).Round(time.Second)))
	if e.Cause != nil {
		return s + "; the last attempt failed, will retry: " + unprefixed(e.Cause)
	}
	return s + "; the replica that rotates has not done it"
}

func (e *OverdueError) Unwrap() error { return e.Cause }

// overdueAfter is how long a due rotation may wait, with no failure seen,
// before RotationOverdue reports it: two of Run's maintenance intervals, in
// which the process that rotates (this one, or the leading replica, whose
// rotation reaches this one by the store's watch) would have done it.
func (m *Manager) overdueAfter() time.Duration { return 2 * m.tick }

// RotationOverdue returns an *OverdueError for the configured algorithm
// whose scheduled rotation has been due longest, if it is overdue at now:
// this process's last attempt failed (while it may rotate), or it has been
// due for longer than two maintenance intervals. Otherwise it returns nil.
// It clears once the rotation happened, by this process or another.
func (m *Manager) RotationOverdue(now time.Time) error {
	set := m.cur.Load().set
	var cause error
	if e := m.maintFailed.Load(); e != nil && m.shouldRotate() {
		cause = *e
	}
	var worst *OverdueError
	for _, alg := range m.p.Algorithms {
		due, ok := nextRotation(set, alg, m.p)
		if !ok || now.Before(due) || (cause == nil && now.Sub(due) < m.overdueAfter()) {
			continue
		}
		if worst == nil || due.Before(worst.Due) {
			worst = &OverdueError{Algorithm: alg, Due: due, Now: now, Cause: cause}
		}
	}
	if worst == nil {
		return nil
	}
	return worst
}

func (m *Manager) needsWork(s *Set, now time.Time) bool {
	for _, alg := range m.p.Algorithms {
		if s.Active(alg) == nil || s.Next(alg) == nil || m.rotationDue(s, alg, now) {
			return true
		}
	}
	for _, k := range s.Keys {
		if k.prunable(now, m.p) {
			return true
		}
	}
	return false
}

func (m *Manager) rotationDue(s *Set, alg Algorithm, now time.Time) bool {
	t, ok := nextRotation(s, alg, m.p)
	return ok && !now.Before(t)
}

// nextRotation is when scheduled rotation will rotate alg: once the active
// key has signed for RotationPeriod, but never before the next key may
// sign. ok is false if scheduled rotation is off or a key is missing.
func nextRotation(s *Set, alg Algorithm, p Policy) (t time.Time, ok bool) {
	act, next := s.Active(alg), s.Next(alg)
	if p.RotationPeriod <= 0 || act == nil || next == nil {
		return time.Time{}, false
	}
	return later(act.Activated.Add(p.RotationPeriod), next.signsFrom(p)), true
}
