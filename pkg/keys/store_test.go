package keys

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// stubStore serves a fixed set and fails every Save with saveErr.
type stubStore struct {
	set     *Set
	saveErr error
	saves   int
}

func (s *stubStore) Load(context.Context) (*Set, error) { return s.set.Clone(), nil }
func (s *stubStore) Close() error                       { return nil }

func (s *stubStore) Save(_ context.Context, set *Set) error {
	s.saves++
	if s.saveErr != nil {
		return s.saveErr
	}
	set.Version++
	s.set = set.Clone()
	return nil
}

func TestUpdateGivesUpAfterBoundedConflicts(t *testing.T) {
	st := &stubStore{set: ensured(t, testPolicy(ES256)), saveErr: fmt.Errorf("keys: stub: %w", ErrConflict)}
	start := time.Now()
	_, err := Update(testCtx(t), st, func(s *Set) error { return s.Rotate(t0, testPolicy(ES256), ES256, true) })
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Update = %v; want ErrConflict", err)
	}
	if st.saves != updateAttempts {
		t.Errorf("%d Save attempts; want %d", st.saves, updateAttempts)
	}
	if want := fmt.Sprintf("keys: gave up after %d conflicting writes: stub: ", updateAttempts); !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q; want prefix %q", err, want)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("giving up took %v", d)
	}
}

func TestUpdateHonorsContext(t *testing.T) {
	st := &stubStore{set: ensured(t, testPolicy(ES256)), saveErr: ErrConflict}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := Update(ctx, st, func(s *Set) error {
		if n++; n == 3 {
			cancel()
		}
		return s.Rotate(t0, testPolicy(ES256), ES256, true)
	})
	if !errors.Is(err, context.Canceled) || n != 3 {
		t.Errorf("Update after cancel = %v after %d attempts; want context.Canceled after 3", err, n)
	}
}

func TestUpdateSkipsUnchangedSave(t *testing.T) {
	st := &stubStore{set: ensured(t, testPolicy(ES256))}
	got, err := Update(testCtx(t), st, func(s *Set) error { return s.Ensure(t0.Add(time.Hour), testPolicy(ES256)) })
	if err != nil {
		t.Fatal(err)
	}
	if st.saves != 0 || got.Version != st.set.Version {
		t.Errorf("a no-op update saved %d times", st.saves)
	}
}

func TestUpdateRefusesInconsistentSet(t *testing.T) {
	st := &stubStore{set: ensured(t, testPolicy(ES256))}
	_, err := Update(testCtx(t), st, func(s *Set) error {
		s.Next(ES256).activate(t0) // two active keys
		return nil
	})
	if err == nil || st.saves != 0 {
		t.Fatalf("Update saved an inconsistent set (err %v)", err)
	}
	if got := err.Error(); !strings.HasPrefix(got, "keys: refusing to save an inconsistent key set: 2 active ES256 keys") {
		t.Errorf("error %q", got)
	}
}

func TestUpdateReturnsFnError(t *testing.T) {
	st := &stubStore{set: ensured(t, testPolicy(ES256))}
	_, err := Update(testCtx(t), st, func(s *Set) error { return s.Rotate(t0, testPolicy(ES256), ES256, false) })
	var te *TooEarlyError
	if !errors.As(err, &te) || st.saves != 0 {
		t.Errorf("Update = %v with %d saves; want the *TooEarlyError and no save", err, st.saves)
	}
}
