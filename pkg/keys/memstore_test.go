package keys

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"
)

// memStore is a Store in memory for this package's tests (the real stores,
// packages filestore and etcdstore, import this one). Like the file store
// it holds the encoded document, so that a test can damage, delete or
// restore it (raw, setRaw) as someone editing the key file would, and its
// Watch signals every change, as the file store's polling does.
type memStore struct {
	mu       sync.Mutex
	doc      []byte // nil: nothing stored
	watchers []chan struct{}
	closed   bool
}

var (
	_ Store   = (*memStore)(nil)
	_ Watcher = (*memStore)(nil)
)

// newMemStore returns an empty memStore, closed when the test ends.
func newMemStore(t testing.TB) *memStore {
	st := &memStore{}
	t.Cleanup(func() { st.Close() })
	return st
}

// memStoreName names the store in its errors, as the file store names its
// file.
const memStoreName = "memory store"

func (s *memStore) Load(ctx context.Context) (*Set, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("keys: %s: %w", memStoreName, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	if s.doc == nil {
		return &Set{}, nil
	}
	return unmarshalSet(s.doc, nil, memStoreName)
}

func (s *memStore) Save(ctx context.Context, set *Set) error {
	next := *set
	next.Version++
	data, err := MarshalSet(&next)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("keys: %s: %w", memStoreName, ErrClosed)
	}
	var cur int64
	if s.doc != nil {
		var head struct {
			Version int64 `json:"version"`
		}
		if err := json.Unmarshal(s.doc, &head); err != nil {
			return &corruptError{memStoreName, err}
		}
		cur = head.Version
	}
	if cur != set.Version {
		return fmt.Errorf("keys: %s is at version %d, not %d: %w", memStoreName, cur, set.Version, ErrConflict)
	}
	s.doc = data
	s.notify()
	set.Version = next.Version
	return nil
}

// raw returns the stored document, nil if there is none.
func (s *memStore) raw() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doc
}

// setRaw replaces the stored document with doc (nil: deletes it), as
// someone writing the key file by hand would.
func (s *memStore) setRaw(doc []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc = doc
	s.notify()
}

// notify signals every watcher. Call with s.mu held.
func (s *memStore) notify() {
	for _, ch := range s.watchers {
		select {
		case ch <- struct{}{}:
		default: // a signal is pending
		}
	}
}

func (s *memStore) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		close(ch)
		return ch
	}
	s.watchers = append(s.watchers, ch)
	context.AfterFunc(ctx, func() { s.stopWatch(ch) })
	return ch
}

func (s *memStore) stopWatch(ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, w := range s.watchers {
		if w == ch {
			s.watchers = append(s.watchers[:i], s.watchers[i+1:]...)
			close(ch)
			return
		}
	}
}

func (s *memStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		for _, ch := range s.watchers {
			close(ch)
		}
		s.watchers = nil
	}
	return nil
}

// TestMemStoreWatch: the test store signals changes and closes its watch
// channels, as the Manager's Run expects of a Watcher.
func TestMemStoreWatch(t *testing.T) {
	st := newMemStore(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	ch := st.Watch(ctx)
	if _, err := Update(ctx, st, func(s *Set) error { return s.Ensure(t0, testPolicy(ES256)) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no signal after a Save")
	}
	cancel()
	for range ch { // drains a pending signal, ends when closed
	}
}
