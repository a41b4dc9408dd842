package keys

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// diskFullStore fails every Save as a full disk would while full is set.
// It is a fake for one error path only: the real stores cannot be made to
// run out of space here (that takes a tiny mounted file system).
type diskFullStore struct {
	Store
	full atomic.Bool
}

func (s *diskFullStore) Save(ctx context.Context, set *Set) error {
	if s.full.Load() {
		return fmt.Errorf("keys: writing keyset.json.tmp-1: %w", syscall.ENOSPC)
	}
	return s.Store.Save(ctx, set)
}

// TestRotationOverdue: a scheduled rotation that fails (the disk is full)
// is reported by RotationOverdue at once, with the failure, until a
// rotation succeeds; one that nobody attempts (this process does not lead)
// is reported once it has been due for two maintenance intervals.
func TestRotationOverdue(t *testing.T) {
	ctx := testCtx(t)
	p := testPolicy(ES256)
	for _, tc := range []struct {
		name      string
		leads     bool
		diskFull  bool
		grace     time.Duration // how long past due it is reported
		wantCause bool
	}{
		{"failing writes", true, true, 0, true},
		{"another replica leads and does not rotate", false, false, 2 * time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &diskFullStore{Store: newMemStore(t)}
			clk := newFakeClock()
			m, err := NewManager(ctx, st, p, t.Logf, func(m *Manager) { m.now = clk.Now },
				WithShouldRotate(func() bool { return tc.leads }))
			if err != nil {
				t.Fatal(err)
			}
			active := m.Status(clk.Now()).Algorithms[0].Active
			if err := m.RotationOverdue(clk.Now()); err != nil {
				t.Fatalf("overdue right after start: %v", err)
			}
			// Due, and not tried yet: not overdue.
			clk.Advance(p.RotationPeriod)
			due := clk.Now()
			if err := m.RotationOverdue(clk.Now()); err != nil {
				t.Errorf("overdue the moment it is due: %v", err)
			}
			st.full.Store(tc.diskFull)
			m.maintain(ctx)
			if tc.grace > 0 {
				clk.Advance(tc.grace - time.Second)
				if err := m.RotationOverdue(clk.Now()); err != nil {
					t.Errorf("reported %v after it was due: %v", tc.grace-time.Second, err)
				}
				clk.Advance(2 * time.Second)
			}
			err = m.RotationOverdue(clk.Now())
			var oe *OverdueError
			if !errors.As(err, &oe) || oe.Algorithm != ES256 || !oe.Due.Equal(due) || errors.Is(err, syscall.ENOSPC) != tc.wantCause {
				t.Fatalf("RotationOverdue = %#v; want ES256 due at %v, cause %v", err, due, tc.wantCause)
			}
			if want := "keys: scheduled rotation of ES256 is overdue: due since " + due.Format(time.RFC3339); !strings.HasPrefix(err.Error(), want) ||
				tc.wantCause != strings.Contains(err.Error(), "the last attempt failed, will retry: writing keyset.json.tmp-1: no space left on device") {
				t.Errorf("message %q", err)
			}

			// It clears once the rotation happens.
			st.full.Store(false)
			if tc.leads {
				m.maintain(ctx)
			} else if _, err := m.Rotate(ctx, nil, false); err != nil { // the leader, at last
				t.Fatal(err)
			}
			if err := m.RotationOverdue(clk.Now()); err != nil {
				t.Errorf("overdue after the rotation: %v", err)
			}
			if m.Status(clk.Now()).Algorithms[0].Active == active {
				t.Error("no rotation happened")
			}
		})
	}
}
