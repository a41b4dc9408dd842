package keys

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tsidp/tsidp/internal/crashtest"
	"tailscale.com/types/logger"
)

// Store persists one key Set with a version for compare-and-swap. It is
// deliberately tiny so that every backend (packages filestore and
// etcdstore) is easy to get right; keystest.RunStoreTests checks a backend
// against this contract. What only some backends can do is an optional
// capability beside it: Watcher, Elector, HealthChecker.
type Store interface {
	// Load returns the current key set and its version: version 0 and an
	// empty set if none was ever saved. It never returns a partly written
	// set.
	Load(ctx context.Context) (*Set, error)
	// Save writes set if the stored version still equals set.Version
	// (compare-and-swap), then sets set.Version to the new version. On a
	// mismatch it writes nothing and returns an error wrapping ErrConflict.
	Save(ctx context.Context, set *Set) error
	// Close releases the store's resources. Later calls fail.
	Close() error
}

// Watcher is an optional Store capability: Watch returns a channel that
// receives a value whenever the stored set may have changed, so replicas and
// the daemon pick up keys written by others (the CLI, another replica)
// without polling the store themselves. Signals are coalesced; the receiver
// reloads. The channel is closed when ctx is done.
type Watcher interface {
	Watch(ctx context.Context) <-chan struct{}
}

// Elector is an optional Store capability of stores that replicas share:
// Elect starts a campaign for the leadership of scheduled rotation (only
// the leader rotates; see WithShouldRotate) and returns at once. The
// campaign stops, resigning if it leads, when the Election or the store is
// closed. Leadership only avoids wasted work: writers still use Update.
type Elector interface {
	Elect(ElectionConfig) Election
}

// ElectionConfig configures a campaign (see Elector).
type ElectionConfig struct {
	// ID names this process to operators while it leads (host name, pid).
	ID string
	// OnChange, if set, is called whenever this process gains or loses
	// leadership.
	OnChange func(leader bool)
	// Logf receives leadership changes and campaign errors; nil means the
	// store's.
	Logf logger.Logf
}

// Election is one campaign of an Elector.
type Election interface {
	// IsLeader reports whether this process leads now.
	IsLeader() bool
	// Terms counts the times this process gained leadership.
	Terms() int64
	// Close stops campaigning; a leader resigns.
	Close()
}

// HealthChecker is an optional Store capability of stores reached over a
// network: Health reports whether the store answers now. A store without
// it (the file store) is taken as always healthy.
type HealthChecker interface {
	Health(ctx context.Context) error
}

// StoreConfig is the configuration of one store backend, which opens its
// store itself. Package config builds the one keys.store names; nothing
// else needs to know which backend it is.
type StoreConfig interface {
	// Open opens the store. With o.MustExist, a store that holds no key
	// set is an error wrapping ErrNoKeySet, and nothing is created.
	Open(ctx context.Context, o OpenOptions) (Store, error)
}

// OpenOptions are the caller's side of opening a store.
type OpenOptions struct {
	// MustExist refuses a store that holds no key set, creating nothing:
	// for tools that would otherwise list nothing, export an empty JWKS or
	// start a new history on a mistyped location.
	MustExist bool
	// Logf receives the store's rare operational messages (never key
	// material); nil discards them.
	Logf logger.Logf
}

// ErrNoKeySet means a store opened with OpenOptions.MustExist holds no key
// set.
var ErrNoKeySet = errors.New("no key set")

// Update attempts. Under heavy contention (TestFileStoreMultiProcess: four
// processes rotating back to back on a busy 2-core machine) an optimistic
// writer can lose 20 races in a row; 50 attempts, about 2–3 s of backoff,
// made that test pass 10 of 10 times under CPU load where 20 failed 8 of 10.
const (
	updateAttempts   = 50
	updateBackoffMin = time.Millisecond
	updateBackoffMax = 100 * time.Millisecond
)

// Update loads the set from s, applies fn and saves the result with
// compare-and-swap, retrying from a fresh load when another writer got
// there first. fn may therefore run several times and must only change the
// set it is given. If fn leaves the set unchanged, nothing is written.
// Update refuses to save a set that fails Check. After a bounded number of
// conflicts it gives up with an error wrapping ErrConflict.
func Update(ctx context.Context, s Store, fn func(*Set) error) (*Set, error) {
	backoff := updateBackoffMin
	for attempt := 1; ; attempt++ {
		set, err := s.Load(ctx)
		if err != nil {
			return nil, err
		}
		before := set.Clone()
		if err := fn(set); err != nil {
			return nil, err
		}
		if set.sameAs(before) {
			return set, nil
		}
		if err := set.Check(); err != nil {
			return nil, wrapf(err, "refusing to save an inconsistent key set")
		}
		crashtest.Point(crashtest.BeforeSave)
		err = s.Save(ctx, set)
		if err == nil {
			crashtest.Point(crashtest.AfterSave)
			return set, nil
		}
		if !errors.Is(err, ErrConflict) {
			return nil, err
		}
		if attempt == updateAttempts {
			return nil, wrapf(err, "gave up after %d conflicting writes", attempt)
		}
		// Full jitter, so that writers that collided spread out.
		if err := sleep(ctx, rand.N(backoff)+1); err != nil {
			return nil, fmt.Errorf("keys: waiting to retry: %w", err)
		}
		backoff = min(2*backoff, updateBackoffMax)
	}
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
