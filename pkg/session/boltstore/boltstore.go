// Package boltstore is the embedded session.Store: one bbolt database
// (what etcd itself is built on) under the state dir.
//
// Writes are group-committed: one goroutine commits, and every write that
// arrives while a commit is on its way to disk goes into the next one, in
// one transaction and one sync. Each caller still returns only once its
// write is on disk, but concurrent logins and refreshes share the cost of
// a sync, with no timer to wait out when there is no one to share with
// (bbolt's own Batch waits for one). Records past their end plus
// session.Retention are swept in the background.
package boltstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/pkg/session"
)

// Config opens a Store.
type Config struct {
	// Path is the database file, created 0600 in a directory created
	// 0700 if missing.
	Path string
	// SweepInterval is how often ended records are removed. Default 10m.
	SweepInterval time.Duration
	// Logf receives sweep failures; nil discards.
	Logf logger.Logf
}

// Store is a session.Store on bbolt.
type Store struct {
	db     *bolt.DB
	logf   logger.Logf
	now    func() time.Time
	writes chan *write // to the committer

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var _ session.Store = (*Store)(nil)

var (
	bucketCodes    = []byte("codes")
	bucketFamilies = []byte("families")
	bucketRevoked  = []byte("revoked_access")
)

// Open opens (creating if needed) the database at cfg.Path. It fails at
// once if another process holds it.
func (cfg Config) Open() (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("boltstore: no path")
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = 10 * time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: %s is in use by another process (another tsidp on this state dir?)", cfg.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: opening %s: %w", cfg.Path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketCodes, bucketFamilies, bucketRevoked} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	s := &Store{db: db, logf: cfg.Logf, now: time.Now, stop: make(chan struct{}), writes: make(chan *write)}
	s.wg.Add(2)
	go s.sweepLoop(cfg.SweepInterval)
	go s.commitLoop()
	return s, nil
}

var _ session.StoreConfig = Config{}

// OpenStore implements session.StoreConfig.
func (cfg Config) OpenStore(context.Context) (session.Store, error) { return cfg.Open() }

// write is one caller's part of a group commit.
type write struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

// maxGroup bounds the writes of one commit.
const maxGroup = 256

// batch runs fn in a group-committed write transaction and returns once
// it is on disk. fn may run more than once (if another write of its group
// fails, the group's writes are retried one by one), so it reports only
// through its return value and variables it sets afresh on each run;
// outcomes such as "already redeemed" are results, not errors, so that
// they do not fail the others' commit.
func (s *Store) batch(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %w", err)
	}
	w := &write{fn: fn, done: make(chan error, 1)}
	select {
	case s.writes <- w:
	case <-s.stop:
		return errors.New("boltstore: store closed")
	}
	// Once queued, the write is waited for even if ctx ends: the caller
	// must know whether it is on disk.
	if err := <-w.done; err != nil {
		return fmt.Errorf("boltstore: %w", err)
	}
	return nil
}

// commitLoop commits writes in groups: the first write that arrives, and
// every one queued behind it by then.
func (s *Store) commitLoop() {
	defer s.wg.Done()
	group := make([]*write, 0, maxGroup)
	for {
		select {
		case <-s.stop:
			return
		case w := <-s.writes:
			group = append(group[:0], w)
		}
	drain:
		for len(group) < maxGroup {
			select {
			case w := <-s.writes:
				group = append(group, w)
			default:
				break drain
			}
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, w := range group {
				if err := w.fn(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			for _, w := range group {
				w.done <- nil
			}
			continue
		}
		// One write failed and took the group's transaction with it:
		// commit each on its own, so only the failing one fails.
		for _, w := range group {
			w.done <- s.db.Update(w.fn)
		}
	}
}

func get[T any](b *bolt.Bucket, key []byte) (*T, error) {
	v := b.Get(key)
	if v == nil {
		return nil, nil
	}
	t := new(T)
	if err := json.Unmarshal(v, t); err != nil {
		return nil, fmt.Errorf("corrupt record: %w", err)
	}
	return t, nil
}

func put(b *bolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

// PutCode implements session.Store.
func (s *Store) PutCode(ctx context.Context, h session.Hash, c *session.Code) error {
	var exists bool
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCodes)
		exists = b.Get(h[:]) != nil
		if exists {
			return nil
		}
		return put(b, h[:], c)
	})
	if err == nil && exists {
		return session.ErrExists
	}
	return err
}

// RedeemCode implements session.Store.
func (s *Store) RedeemCode(ctx context.Context, h session.Hash, now time.Time, familyID, accessJTI string, check func(*session.Code) error) (*session.Code, error) {
	var out *session.Code
	var outErr error
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		out, outErr = nil, nil
		b := tx.Bucket(bucketCodes)
		c, err := get[session.Code](b, h[:])
		switch {
		case err != nil:
			return err
		case c == nil, !c.Redeemed && !now.Before(c.Expires):
			outErr = session.ErrNotFound
			return nil
		case c.Redeemed:
			out, outErr = c, session.ErrRedeemed
			return nil
		}
		if check != nil {
			if err := check(c); err != nil {
				out, outErr = c, err
				return nil
			}
		}
		c.Redeemed, c.FamilyID, c.AccessJTI = true, familyID, accessJTI
		out = c
		return put(b, h[:], c)
	})
	if err != nil {
		return nil, err
	}
	return out, outErr
}

// PutFamily implements session.Store.
func (s *Store) PutFamily(ctx context.Context, f *session.Family) error {
	var exists bool
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFamilies)
		exists = b.Get([]byte(f.ID)) != nil
		if exists {
			return nil
		}
		return put(b, []byte(f.ID), f)
	})
	if err == nil && exists {
		return session.ErrExists
	}
	return err
}

// Family implements session.Store.
func (s *Store) Family(ctx context.Context, id string) (*session.Family, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	var f *session.Family
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		f, err = get[session.Family](tx.Bucket(bucketFamilies), []byte(id))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: family %s: %w", id, err)
	}
	if f == nil {
		return nil, session.ErrNotFound
	}
	return f, nil
}

// UpdateFamily implements session.Store.
func (s *Store) UpdateFamily(ctx context.Context, f *session.Family, prev int) error {
	var outErr error
	err := s.batch(ctx, func(tx *bolt.Tx) error {
		outErr = nil
		b := tx.Bucket(bucketFamilies)
		cur, err := get[session.Family](b, []byte(f.ID))
		switch {
		case err != nil:
			return err
		case cur == nil:
			outErr = session.ErrNotFound
			return nil
		case cur.Generation != prev:
			outErr = session.ErrConflict
			return nil
		}
		return put(b, []byte(f.ID), f)
	})
	if err != nil {
		return err
	}
	return outErr
}

// RevokeAccess implements session.Store.
func (s *Store) RevokeAccess(ctx context.Context, jti string, expires time.Time) error {
	return s.batch(ctx, func(tx *bolt.Tx) error {
		v, err := expires.UTC().MarshalText()
		if err != nil {
			return err
		}
		return tx.Bucket(bucketRevoked).Put([]byte(jti), v)
	})
}

// AccessRevoked implements session.Store.
func (s *Store) AccessRevoked(ctx context.Context, jti string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("boltstore: %w", err)
	}
	var revoked bool
	err := s.db.View(func(tx *bolt.Tx) error {
		revoked = tx.Bucket(bucketRevoked).Get([]byte(jti)) != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("boltstore: %w", err)
	}
	return revoked, nil
}

// Sweep removes records that ended more than session.Retention before now:
// expired codes, ended families, revocations of expired access tokens. It
// returns how many it removed.
func (s *Store) Sweep(now time.Time) (int, error) {
	cutoff := now.Add(-session.Retention)
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		var doomed [][]byte
		collect := func(b *bolt.Bucket, ended func(v []byte) bool) {
			doomed = doomed[:0]
			b.ForEach(func(k, v []byte) error {
				if ended(v) {
					doomed = append(doomed, append([]byte(nil), k...))
				}
				return nil
			})
			for _, k := range doomed {
				b.Delete(k)
				n++
			}
		}
		collect(tx.Bucket(bucketCodes), func(v []byte) bool {
			var c session.Code
			return json.Unmarshal(v, &c) != nil || c.Expires.Before(cutoff)
		})
		collect(tx.Bucket(bucketFamilies), func(v []byte) bool {
			var f session.Family
			if json.Unmarshal(v, &f) != nil {
				return true
			}
			end := f.Expires
			if f.IdleTimeout > 0 {
				end = minTime(end, f.LastUsed.Add(f.IdleTimeout))
			}
			return end.Before(cutoff)
		})
		collect(tx.Bucket(bucketRevoked), func(v []byte) bool {
			var t time.Time
			return t.UnmarshalText(v) != nil || t.Before(cutoff)
		})
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("boltstore: sweep: %w", err)
	}
	return n, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (s *Store) sweepLoop(every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if _, err := s.Sweep(s.now()); err != nil {
			s.logf("%v", err)
		}
	}
}

// Close implements session.Store. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("boltstore: %w", err)
		}
	})
	return s.closeErr
}
