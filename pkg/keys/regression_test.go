package keys

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestManagerRefusesRegressedStore: if the key file is deleted, or
// replaced by an older copy, while the daemon runs, neither scheduled
// maintenance nor an operator's command writes over it (which would start a
// new history without the keys that signed unexpired tokens); the daemon
// keeps signing and publishing the keys it has, says so loudly, and
// resumes once the newer set is back.
func TestManagerRefusesRegressedStore(t *testing.T) {
	p := testPolicy(ES256)
	p.RotationPeriod, p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL = 2*time.Hour, time.Hour, time.Minute, 3*time.Hour
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	old := tm.st.raw() // version 1
	if _, err := tm.Rotate(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.Rotate(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	current := tm.st.raw() // version 3
	inUse := tm.Version()
	_, kid, _ := tm.Sign(nil, ES256, testPayload)
	jwks, etag := tm.JWKS()

	for _, tc := range []struct {
		name    string
		corrupt func()
		want    string
	}{
		{"deleted", func() { tm.st.setRaw(nil) }, "the key store is empty"},
		{"older copy", func() { tm.st.setRaw(old) }, "holds key set version 1"},
		// An older copy, then written to (say by `tsidp keys rotate` on a
		// host without a daemon) until it reaches the version in use: a
		// new history without the keys in use.
		{"older copy written since", func() {
			tm.st.setRaw(old)
			for range 2 {
				if _, err := Update(ctx, tm.st, func(s *Set) error { return s.Rotate(tm.clk.Now(), p, ES256, true) }); err != nil {
					t.Fatal(err)
				}
			}
		}, "holds key set version 3, which lacks the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.corrupt()
			before := tm.st.raw()
			tm.log.mu.Lock()
			beforeLog := len(tm.log.lines)
			tm.log.mu.Unlock()

			// The watch-driven reload refuses to adopt it.
			err := tm.Reload(ctx)
			var re *RegressionError
			if !errors.As(err, &re) || !errors.Is(err, ErrStoreRegressed) || re.InUse != inUse {
				t.Fatalf("Reload = %v; want a *RegressionError", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "keeping the current keys") {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			// Scheduled maintenance with a rotation due (and as leader)
			// does not write.
			tm.clk.Advance(3 * time.Hour)
			tm.maintain(ctx)
			// Nor do operator commands.
			if _, err := tm.Rotate(ctx, nil, true); !errors.Is(err, ErrStoreRegressed) {
				t.Errorf("Rotate over a regressed store = %v", err)
			}
			if _, err := tm.Revoke(ctx, kid); !errors.Is(err, ErrStoreRegressed) {
				t.Errorf("Revoke over a regressed store = %v", err)
			}
			after := tm.st.raw()
			if string(after) != string(before) {
				t.Fatal("the regressed store was written to")
			}
			// Signing and the JWKS are untouched.
			if _, k, err := tm.Sign(nil, ES256, testPayload); err != nil || k != kid {
				t.Errorf("Sign = %s, %v; want the old active key %s", k, err, kid)
			}
			if j, e := tm.JWKS(); string(j) != string(jwks) || e != etag {
				t.Error("JWKS changed")
			}
			if tm.Version() != inUse {
				t.Errorf("version in use %d, want %d", tm.Version(), inUse)
			}
			if tm.Regression() == nil {
				t.Error("Regression() = nil while the store is behind")
			}
			tm.log.mu.Lock()
			newLines := strings.Join(tm.log.lines[beforeLog:], "\n")
			tm.log.mu.Unlock()
			if !strings.Contains(newLines, "keys: ALERT: the key store") {
				t.Errorf("no loud log line:\n%s", newLines)
			}

			// The newer set is put back: everything resumes.
			tm.st.setRaw(current)
			if err := tm.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if tm.Regression() != nil {
				t.Errorf("Regression() = %v after the store recovered", tm.Regression())
			}
		})
	}
	// Maintenance works again: the overdue rotation happens.
	tm.maintain(ctx)
	if tm.Version() != inUse+1 {
		t.Errorf("after recovery version %d, want %d", tm.Version(), inUse+1)
	}
}

// TestManagerAdoptsOtherWritersChanges: the check that refuses a foreign
// history does not refuse what other writers legitimately do: revoke a
// key (it stays as a tombstone) and prune a retired key once its recorded
// RemoveAt has passed, even by a writer whose clock runs a little ahead.
func TestManagerAdoptsOtherWritersChanges(t *testing.T) {
	p := testPolicy(ES256)
	p.RotationPeriod, p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL = 2*time.Hour, time.Hour, time.Minute, 3*time.Hour
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	if _, err := tm.Rotate(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	var retired *Key
	for _, k := range tm.cur.Load().set.Keys {
		if k.State == StateRetired {
			retired = k
		}
	}
	if retired == nil {
		t.Fatal("no retired key after a rotation")
	}
	other := func(f func(s *Set) error) {
		t.Helper()
		if _, err := Update(ctx, tm.st, f); err != nil {
			t.Fatal(err)
		}
		if err := tm.Reload(ctx); err != nil {
			t.Fatalf("Reload after another writer's change: %v", err)
		}
		if tm.Regression() != nil {
			t.Fatalf("Regression() = %v", tm.Regression())
		}
	}
	// Another writer revokes the next key.
	next := tm.cur.Load().set.Next(ES256).ID
	other(func(s *Set) error { return s.Revoke(tm.clk.Now(), p, next) })
	if k := tm.cur.Load().set.Key(next); k == nil || k.State != StateRevoked {
		t.Fatalf("the other writer's revocation was not adopted: %+v", k)
	}
	// Another writer, its clock 30 s ahead, prunes the retired key just
	// before this process's clock reaches its RemoveAt.
	tm.clk.Advance(retired.RemoveAt.Sub(tm.clk.Now()) - 30*time.Second)
	other(func(s *Set) error {
		if n := s.Prune(retired.RemoveAt, p); n != 1 {
			t.Fatalf("pruned %d keys, want 1", n)
		}
		return nil
	})
	if tm.cur.Load().set.Key(retired.ID) != nil {
		t.Error("the other writer's prune was not adopted")
	}
}

// TestManagerRunWakesWhenDue: Run rotates when rotation is due, not at its
// next tick (here an hour away), and a Poke makes a new leader do overdue
// work at once.
func TestManagerRunWakesWhenDue(t *testing.T) {
	p := testPolicy(ES256)
	p.RotationPeriod, p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL = 400*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond, time.Hour
	var leader atomic.Bool
	leader.Store(true)
	st := newMemStore(t)
	m, err := NewManager(testCtx(t), st, p, t.Logf,
		func(m *Manager) { m.tick = time.Hour },
		WithShouldRotate(leader.Load))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan struct{})
	go func() {
		m.Run(ctx)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	first := m.Status(time.Now()).Algorithms[0]
	waitFor(t, "the scheduled rotation", func() bool { return m.Status(time.Now()).Algorithms[0].Active != first.Active })
	late := time.Since(first.NextRotation)
	t.Logf("rotated %v after it was due", late)
	if late > time.Second {
		t.Errorf("rotation %v late with a 1h tick", late)
	}

	// Not the leader: nothing happens when the next rotation is due…
	leader.Store(false)
	second := m.Status(time.Now()).Algorithms[0]
	time.Sleep(time.Until(second.NextRotation) + 200*time.Millisecond)
	if m.Status(time.Now()).Algorithms[0].Active != second.Active {
		t.Fatal("a non-leader rotated")
	}
	// …until it becomes the leader and is poked.
	leader.Store(true)
	start := time.Now()
	m.Poke()
	waitFor(t, "rotation after Poke", func() bool { return m.Status(time.Now()).Algorithms[0].Active != second.Active })
	t.Logf("rotated %v after Poke", time.Since(start))
}

// TestManagerRefusal: a stored key set the Manager cannot use (here a
// damaged file) is reported by Refusal while the current keys go on
// signing, and the report clears once a usable set is back.
func TestManagerRefusal(t *testing.T) {
	tm := newTestManager(t, testPolicy(ES256))
	ctx := testCtx(t)
	good := tm.st.raw()
	tm.st.setRaw(good[:len(good)/2])
	if err := tm.Reload(ctx); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Reload of a damaged file = %v", err)
	}
	if err := tm.Refusal(); err == nil || !strings.Contains(err.Error(), "refusing the stored key set, still signing with version 1") {
		t.Errorf("Refusal() = %v", err)
	}
	if _, _, err := tm.Sign(nil, ES256, testPayload); err != nil {
		t.Errorf("Sign while the stored set is refused: %v", err)
	}
	tm.st.setRaw(good)
	if err := tm.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tm.Refusal(); err != nil {
		t.Errorf("Refusal() = %v after the set was repaired", err)
	}
}
