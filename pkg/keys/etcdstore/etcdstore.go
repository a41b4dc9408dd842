// Package etcdstore is a keys.Store on etcd v3, for tsidp replicas that
// share one key set.
//
// The whole set is one etcd key, <prefix>keyset, holding the document
// keys.MarshalSealedSet writes: public keys and lifecycle dates readable,
// every private key sealed with AES-256-GCM under a key-encryption key
// (KEK) that never leaves the replicas (see LoadKEK), and the whole document
// authenticated under the KEK. etcd, its backups and its snapshots therefore
// never hold a private key in the clear, and a writer without the KEK cannot
// plant or alter a key.
//
// Writes are compare-and-swap: Save reads the stored document's version
// and commits with a transaction conditioned on the key's ModRevision, so
// two writers (replicas, the CLI) can never both succeed from the same
// version, and none loses another's update. The set's version lives in the
// document and grows by one per write, as with the file store.
//
// Watch turns etcd watch events into reload signals, so every replica
// switches to a new set within one watch round trip of the write.
//
// Elect runs leader election under <prefix>leader through etcd's
// concurrency package, so that exactly one replica performs scheduled
// rotation.
package etcdstore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"tailscale.com/types/logger"

	"github.com/tsidp/tsidp/internal/crashtest"
	"github.com/tsidp/tsidp/pkg/keys"
)

// Defaults.
const (
	DefaultPrefix      = "/tsidp/"
	DefaultDialTimeout = 5 * time.Second
	// DefaultOpTimeout bounds an operation whose context has no deadline.
	DefaultOpTimeout = 10 * time.Second
	// reconnectMaxDelay caps the wait between attempts to reconnect to an
	// etcd member.
	reconnectMaxDelay = 2 * time.Second
)

// Key names under the prefix.
const (
	setKeyName      = "keyset"
	electionKeyName = "leader"
)

// Config configures a Store.
type Config struct {
	// Endpoints are the etcd members' client addresses, host:port (or
	// http:// and https:// URLs).
	Endpoints []string
	// Prefix is prepended to every key tsidp uses. Default "/tsidp/".
	// Deployments sharing an etcd cluster need distinct prefixes.
	Prefix string
	// TLS, if non-nil, secures the connection (server verification and
	// client certificates).
	TLS *tls.Config
	// Sealer encrypts private keys at rest. Required.
	Sealer keys.Sealer
	// DialTimeout bounds Open's first contact with the cluster. Default 5s.
	DialTimeout time.Duration
	// ElectionTTL bounds how long a dead leader keeps leadership (see
	// Elect): its lease has ElectionTTL minus one second (whole seconds,
	// at least 2), and etcd revokes an expired lease within half a
	// second, after which the next replica wins at once. Default
	// DefaultElectionTTL.
	ElectionTTL time.Duration
	// Logf receives rare operational messages (watch restarts); nil
	// discards them. Lines never hold key material.
	Logf logger.Logf
}

// Store is a keys.Store on etcd, with the keys.Watcher, keys.Elector and
// keys.HealthChecker capabilities.
type Store struct {
	cli       *clientv3.Client
	prefix    string
	key       string
	sealer    keys.Sealer
	endpoints string // for messages
	logf      logger.Logf
	opTimeout time.Duration
	electTTL  time.Duration

	closed    atomic.Bool
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // watch and election goroutines

	mu       sync.Mutex
	electors []*Elector
}

var (
	_ keys.Store         = (*Store)(nil)
	_ keys.Watcher       = (*Store)(nil)
	_ keys.Elector       = (*Store)(nil)
	_ keys.HealthChecker = (*Store)(nil)
)

// Open connects to etcd and checks, within DialTimeout, that the cluster
// answers a linearizable read (so it has quorum). It does not read the key
// set; the first Load does.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no endpoints")
	}
	if cfg.Sealer == nil {
		return nil, errors.New("etcdstore: no sealer: private keys must be encrypted at rest (a key-encryption key is required)")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.ElectionTTL <= 0 {
		cfg.ElectionTTL = DefaultElectionTTL
	}
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	cli, err := NewClient(cfg.Endpoints, cfg.TLS, cfg.DialTimeout)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cli:       cli,
		prefix:    cfg.Prefix,
		key:       cfg.Prefix + setKeyName,
		sealer:    cfg.Sealer,
		endpoints: strings.Join(cfg.Endpoints, ","),
		logf:      cfg.Logf,
		opTimeout: DefaultOpTimeout,
		electTTL:  cfg.ElectionTTL,
		done:      make(chan struct{}),
	}
	// Client creation does not connect; a bounded read does, and proves
	// the cluster has a quorum.
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, s.key, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcdstore: etcd at %s did not answer within %s: %w", s.endpoints, cfg.DialTimeout, err)
	}
	return s, nil
}

// NewClient returns an etcd client for endpoints (host:port or URLs) with
// tsidp's connection settings: keepalives that notice a dead member within
// seconds, reconnects that back off to at most a few seconds, TLS when tc
// is set. It does not connect yet. Other stores that keep state in the
// same cluster (login sessions) use it too.
func NewClient(endpoints []string, tc *tls.Config, dialTimeout time.Duration) (*clientv3.Client, error) {
	if dialTimeout <= 0 {
		dialTimeout = DefaultDialTimeout
	}
	eps, err := normalizeEndpoints(endpoints, tc != nil)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: dialTimeout,
		// Notice a dead connection within seconds, not at the kernel's TCP
		// timeout, so requests fail over to another member quickly.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		PermitWithoutStream:  true,
		TLS:                  tc,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to two minutes, so after
		// a long etcd outage replicas would take up to that long to notice
		// it is back. Cap it at two seconds: a handful of cheap dials per
		// replica while etcd is down, and catch-up within seconds.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
			MinConnectTimeout: dialTimeout,
		})},
		// RejectOldCluster stays off: the v3.7 client calls servers older
		// than 3.6 "old" and refuses them with it, but every API tsidp
		// uses (KV Range/Txn/Put, Watch with created-notify and
		// require-leader, Lease Grant/KeepAlive/Revoke, the concurrency
		// election) works against etcd 3.4, which the tests run (Debian's
		// etcd-server 3.4.23).
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: %w", err)
	}
	return cli, nil
}

// normalizeEndpoints turns host:port into URLs with the scheme the TLS
// setting implies, and rejects a scheme that contradicts it.
func normalizeEndpoints(in []string, useTLS bool) ([]string, error) {
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	out := make([]string, 0, len(in))
	for _, e := range in {
		e = strings.TrimSpace(e)
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return nil, fmt.Errorf("etcdstore: endpoint %q: want host:port or http(s)://host:port", e)
			}
			if u.Scheme != scheme {
				return nil, fmt.Errorf("etcdstore: endpoint %q: scheme %s, but TLS is %s", e, u.Scheme, onOff(useTLS))
			}
			e = u.Host
		}
		if _, port, err := net.SplitHostPort(e); err != nil || port == "" {
			return nil, fmt.Errorf("etcdstore: endpoint %q: want host:port", e)
		}
		out = append(out, scheme+"://"+e)
	}
	return out, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// Key returns the etcd key that holds the key set.
func (s *Store) Key() string { return s.key }

// Client returns the etcd client, for tests and tools.
func (s *Store) Client() *clientv3.Client { return s.cli }

// bounded returns ctx with the default operation timeout if it has no
// deadline: a request to an unreachable cluster must not hang.
func (s *Store) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.opTimeout)
}

func (s *Store) checkOpen() error {
	if s.closed.Load() {
		return fmt.Errorf("etcdstore: %s: %w", s.key, keys.ErrClosed)
	}
	return nil
}

// Load implements keys.Store: a linearizable read of the key set. A missing
// key is the empty set at version 0.
func (s *Store) Load(ctx context.Context) (*keys.Set, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: reading %s from %s: %w", s.key, s.endpoints, err)
	}
	if len(resp.Kvs) == 0 {
		return &keys.Set{}, nil
	}
	set, err := keys.UnmarshalSealedSet(resp.Kvs[0].Value, s.sealer)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: %s: %w", s.key, err)
	}
	return set, nil
}

// Save implements keys.Store. It encodes and seals set at the next version,
// reads the stored version, and commits only if the key has not changed
// since that read (ModRevision compare). On a version mismatch or a lost
// race it writes nothing and returns an error wrapping keys.ErrConflict.
//
// If the transaction's outcome is unknown (the connection broke after
// sending it), Save returns an error that does not wrap ErrConflict; the
// write may or may not have happened, and a watcher will see it if it did.
func (s *Store) Save(ctx context.Context, set *keys.Set) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	next := *set
	next.Version++
	data, err := keys.MarshalSealedSet(&next, s.sealer)
	if err != nil {
		return fmt.Errorf("etcdstore: %w", err)
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key)
	if err != nil {
		return fmt.Errorf("etcdstore: reading %s from %s: %w", s.key, s.endpoints, err)
	}
	var cur, modRev int64
	if len(resp.Kvs) > 0 {
		kv := resp.Kvs[0]
		modRev = kv.ModRevision
		if cur, err = storedVersion(kv.Value); err != nil {
			return fmt.Errorf("etcdstore: %s: %w", s.key, err)
		}
	}
	if cur != set.Version {
		return fmt.Errorf("etcdstore: %s is at version %d, not %d: %w", s.key, cur, set.Version, keys.ErrConflict)
	}
	crashtest.Point(crashtest.EtcdBeforeTxn)
	// For a key that does not exist, etcd compares ModRevision 0: the
	// first write succeeds only if nobody created the key meanwhile.
	tx, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.key), "=", modRev)).
		Then(clientv3.OpPut(s.key, string(data))).
		Commit()
	if err != nil {
		return fmt.Errorf("etcdstore: writing %s (the write may or may not have happened): %w", s.key, err)
	}
	if !tx.Succeeded {
		return fmt.Errorf("etcdstore: %s changed while writing version %d: %w", s.key, next.Version, keys.ErrConflict)
	}
	crashtest.Point(crashtest.EtcdAfterTxn)
	set.Version = next.Version
	return nil
}

// storedVersion reads the format and version of a stored document without
// opening its private keys.
func storedVersion(data []byte) (int64, error) {
	var head struct {
		Format  int   `json:"format"`
		Version int64 `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return 0, fmt.Errorf("%w: %v", keys.ErrCorrupt, err)
	}
	if head.Format != keys.FormatVersion {
		return 0, fmt.Errorf("key set format %d; this tsidp writes only format %d and will not overwrite it", head.Format, keys.FormatVersion)
	}
	return head.Version, nil
}

// Health reports whether the cluster answers a linearizable read (which
// needs a quorum of members) before ctx is done, or within the default
// operation timeout if ctx has no deadline.
func (s *Store) Health(ctx context.Context) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	if _, err := s.cli.Get(ctx, s.key, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcdstore: etcd at %s unreachable or without quorum: %w", s.endpoints, err)
	}
	return nil
}

// Watch implements keys.Watcher. The channel receives a signal after every
// change of the key set, and each time the etcd watch is established: once
// at first (a change may land before etcd registers the watch) and after it
// had to be re-established (a member lost its leader, history compacted),
// since changes may have been missed then. It is closed when ctx is done or
// the store is closed.
func (s *Store) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	signal := func() {
		select {
		case ch <- struct{}{}:
		default: // one signal is pending; the reader reloads anyway
		}
	}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		close(ch)
		return ch
	}
	s.wg.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer s.wg.Done()
		defer close(ch)
		defer cancel()
		go func() {
			select {
			case <-s.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
		backoff := minBackoff
		for {
			ok := s.watchOnce(ctx, signal)
			if ctx.Err() != nil {
				return
			}
			if ok {
				backoff = minBackoff
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
		}
	}()
	return ch
}

// watchOnce runs one etcd watch until it breaks. It signals once the watch
// is established, because a change may have happened before (between the
// call to Watch, or the last watch breaking, and now), and on every event.
// It reports whether the watch got established.
func (s *Store) watchOnce(ctx context.Context, signal func()) (established bool) {
	// WithRequireLeader: a member cut off from its cluster cancels the
	// watch instead of keeping it open and silent.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.key, clientv3.WithCreatedNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			// Log a watch that worked and broke; attempts that never get
			// established (etcd down) stay quiet: the health check and
			// the elector report the outage.
			if established && ctx.Err() == nil && !s.closed.Load() {
				s.logf("etcdstore: watch on %s ended (%v); re-establishing", s.key, err)
			}
			if resp.CompactRevision != 0 {
				signal()
			}
			return established
		}
		if resp.Created {
			established = true
			signal()
			continue
		}
		if len(resp.Events) > 0 {
			signal()
		}
	}
	return established
}

// Close implements keys.Store: it resigns leadership (bounded), stops
// watches and closes the etcd client. Later Loads and Saves fail with
// keys.ErrClosed. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		els := s.electors
		s.electors = nil
		s.closed.Store(true) // no new watches or electors from here on
		s.mu.Unlock()
		for _, e := range els {
			e.Close()
		}
		close(s.done)
		s.cli.Close()
		s.wg.Wait()
	})
	return nil
}
