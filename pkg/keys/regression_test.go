package keys

import (
	"context"
	"errors"
	"os"
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
	old, err := os.ReadFile(tm.st.Path()) // version 1
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.Rotate(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := tm.Rotate(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	current, _ := os.ReadFile(tm.st.Path()) // version 3
	inUse := tm.Version()
	_, kid, _ := tm.Sign(nil, ES256, testPayload)
	jwks, etag := tm.JWKS()

	for _, tc := range []struct {
		name    string
		corrupt func()
		want    string
	}{
		{"deleted", func() { os.Remove(tm.st.Path()) }, "the key store is empty"},
		{"older copy", func() { os.WriteFile(tm.st.Path(), old, 0o600) }, "holds key set version 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.corrupt()
			before, _ := os.ReadFile(tm.st.Path())
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
			if err := tm.Rotate(ctx, nil, true); !errors.Is(err, ErrStoreRegressed) {
				t.Errorf("Rotate over a regressed store = %v", err)
			}
			if err := tm.Revoke(ctx, kid); !errors.Is(err, ErrStoreRegressed) {
				t.Errorf("Revoke over a regressed store = %v", err)
			}
			after, _ := os.ReadFile(tm.st.Path())
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
			os.WriteFile(tm.st.Path(), current, 0o600)
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

// TestManagerRunWakesWhenDue: Run rotates when rotation is due, not at its
// next tick (here an hour away), and a Poke makes a new leader do overdue
// work at once.
func TestManagerRunWakesWhenDue(t *testing.T) {
	p := testPolicy(ES256)
	p.RotationPeriod, p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL = 400*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond, time.Hour
	var leader atomic.Bool
	leader.Store(true)
	st := newTestFileStore(t, keyDir(t))
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
