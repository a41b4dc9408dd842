package keys

import (
	"context"
	"time"
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
		m.logf("keys: scheduled key maintenance failed, will retry: %s", unprefixed(err))
	}
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
