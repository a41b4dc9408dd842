// Package etcdstore is the session.Store of replicas: codes, login
// sessions and revoked access tokens in the etcd cluster that holds their
// keys, so that a code issued by one replica is redeemed at another and a
// refresh works at any of them.
//
// Every record carries a lease that ends it session.Retention after it
// ends, so etcd drops old records by itself. Changes are compare-and-swap
// transactions on the record's revision; etcd answers a write only once a
// quorum has it on disk.
package etcdstore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	keysetcd "github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/session"
)

// Config opens a Store.
type Config struct {
	// Endpoints, TLS and DialTimeout reach the cluster, as for the key
	// store (keys.etcd).
	Endpoints   []string
	TLS         keysetcd.TLSFiles
	DialTimeout time.Duration
	// Prefix is prepended to every key: <prefix>sessions/…. Default
	// "/tsidp/", as for the key store.
	Prefix string
}

// Store is a session.Store on etcd.
type Store struct {
	cli       *clientv3.Client
	prefix    string
	opTimeout time.Duration
	now       func() time.Time

	closeOnce sync.Once
}

var _ session.Store = (*Store)(nil)

// opTimeout bounds each operation, whatever the caller's context allows.
const opTimeout = 10 * time.Second

// casAttempts bounds the retries of a compare-and-swap that lost a race
// to a change of the same record.
const casAttempts = 10

// Open connects to the cluster and checks that it answers within
// DialTimeout.
func (c Config) Open(ctx context.Context) (*Store, error) {
	tc, err := c.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("session etcdstore: %w", err)
	}
	cli, err := keysetcd.NewClient(c.Endpoints, tc, c.DialTimeout)
	if err != nil {
		return nil, fmt.Errorf("session etcdstore: %w", err)
	}
	if c.Prefix == "" {
		c.Prefix = keysetcd.DefaultPrefix
	}
	s := &Store{cli: cli, prefix: c.Prefix + "sessions/", opTimeout: opTimeout, now: time.Now}
	dt := c.DialTimeout
	if dt <= 0 {
		dt = keysetcd.DefaultDialTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, dt)
	defer cancel()
	if _, err := cli.Get(pctx, s.prefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("session etcdstore: etcd did not answer within %s: %w", dt, err)
	}
	return s, nil
}

var _ session.StoreConfig = Config{}

// OpenStore implements session.StoreConfig.
func (c Config) OpenStore(ctx context.Context) (session.Store, error) { return c.Open(ctx) }

func (s *Store) codeKey(h session.Hash) string { return s.prefix + "code/" + hex.EncodeToString(h[:]) }
func (s *Store) familyKey(id string) string    { return s.prefix + "family/" + id }
func (s *Store) revokedKey(jti string) string  { return s.prefix + "revoked/" + jti }

func (s *Store) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opTimeout)
}

// lease returns a lease that ends at end plus session.Retention.
func (s *Store) lease(ctx context.Context, end time.Time) (clientv3.LeaseID, error) {
	ttl := int64(end.Add(session.Retention).Sub(s.now()) / time.Second)
	if ttl < 60 {
		ttl = 60
	}
	l, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, err
	}
	return l.ID, nil
}

func familyEnd(f *session.Family) time.Time {
	end := f.Expires
	if f.IdleTimeout > 0 {
		if idle := f.LastUsed.Add(f.IdleTimeout); idle.Before(end) {
			end = idle
		}
	}
	return end
}

// create puts v at key if key does not exist, with a lease to end.
func (s *Store) create(ctx context.Context, key string, v any, end time.Time) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	lid, err := s.lease(ctx, end)
	if err != nil {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data), clientv3.WithLease(lid))).
		Commit()
	if err != nil {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	if !resp.Succeeded {
		return session.ErrExists
	}
	return nil
}

// get reads key into v and returns its mod revision, or 0 if absent.
func (s *Store) get(ctx context.Context, key string, v any) (int64, error) {
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("session etcdstore: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return 0, fmt.Errorf("session etcdstore: corrupt record %s: %w", key, err)
	}
	return resp.Kvs[0].ModRevision, nil
}

// swap replaces key with v if it is still at revision rev. lease, if not
// zero, replaces the record's lease; else it keeps its lease.
func (s *Store) swap(ctx context.Context, key string, rev int64, v any, lease clientv3.LeaseID) (bool, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return false, fmt.Errorf("session etcdstore: %w", err)
	}
	opt := clientv3.WithIgnoreLease()
	if lease != 0 {
		opt = clientv3.WithLease(lease)
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(data), opt)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("session etcdstore: %w", err)
	}
	return resp.Succeeded, nil
}

// PutCode implements session.Store.
func (s *Store) PutCode(ctx context.Context, h session.Hash, c *session.Code) error {
	return s.create(ctx, s.codeKey(h), c, c.Expires)
}

// RedeemCode implements session.Store.
func (s *Store) RedeemCode(ctx context.Context, h session.Hash, now time.Time, familyID, accessJTI string, check func(*session.Code) error) (*session.Code, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	key := s.codeKey(h)
	for range casAttempts {
		var c session.Code
		rev, err := s.get(ctx, key, &c)
		switch {
		case err != nil:
			return nil, err
		case rev == 0, !c.Redeemed && !now.Before(c.Expires):
			return nil, session.ErrNotFound
		case c.Redeemed:
			return &c, session.ErrRedeemed
		}
		if check != nil {
			if err := check(&c); err != nil {
				return &c, err
			}
		}
		c.Redeemed, c.FamilyID, c.AccessJTI = true, familyID, accessJTI
		ok, err := s.swap(ctx, key, rev, &c, 0)
		if err != nil {
			return nil, err
		}
		if ok {
			return &c, nil
		}
		// Another redemption got there first: read again.
	}
	return nil, fmt.Errorf("session etcdstore: code redemption kept losing races")
}

// PutFamily implements session.Store.
func (s *Store) PutFamily(ctx context.Context, f *session.Family) error {
	return s.create(ctx, s.familyKey(f.ID), f, familyEnd(f))
}

// Family implements session.Store.
func (s *Store) Family(ctx context.Context, id string) (*session.Family, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	var f session.Family
	rev, err := s.get(ctx, s.familyKey(id), &f)
	if err != nil {
		return nil, err
	}
	if rev == 0 {
		return nil, session.ErrNotFound
	}
	return &f, nil
}

// UpdateFamily implements session.Store.
func (s *Store) UpdateFamily(ctx context.Context, f *session.Family, prev int) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	key := s.familyKey(f.ID)
	lid, err := s.lease(ctx, familyEnd(f))
	if err != nil {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	for range casAttempts {
		var cur session.Family
		rev, err := s.get(ctx, key, &cur)
		switch {
		case err != nil:
			return err
		case rev == 0:
			return session.ErrNotFound
		case cur.Generation != prev:
			return session.ErrConflict
		}
		ok, err := s.swap(ctx, key, rev, f, lid)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return session.ErrConflict
}

// RevokeAccess implements session.Store.
func (s *Store) RevokeAccess(ctx context.Context, jti string, expires time.Time) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	lid, err := s.lease(ctx, expires)
	if err != nil {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	v, _ := expires.UTC().MarshalText()
	if _, err := s.cli.Put(ctx, s.revokedKey(jti), string(v), clientv3.WithLease(lid)); err != nil {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	return nil
}

// AccessRevoked implements session.Store.
func (s *Store) AccessRevoked(ctx context.Context, jti string) (bool, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.revokedKey(jti), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("session etcdstore: %w", err)
	}
	return resp.Count > 0, nil
}

// Close implements session.Store.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.cli.Close() })
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("session etcdstore: %w", err)
	}
	return nil
}
