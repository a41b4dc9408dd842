package keys

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tsidp/tsidp/internal/crashtest"
	"tailscale.com/types/logger"
)

// Manager holds the key set of a running tsidp: it signs tokens, serves the
// JWKS, and changes the set (rotation, revocation, import) through its
// Store. Signing reads an immutable compiled snapshot through an atomic
// pointer, so it never waits for, or does, I/O.
//
// Several Managers may share a Store (the daemon and the CLI, or
// replicas): their writes go through Update, and Run picks up the others'
// changes. A next key reaches every replica's JWKS within the store's
// change-notification delay (about a second for the file store), which the
// publication lead's clock skew covers.
type Manager struct {
	st   Store
	p    Policy
	logf logger.Logf

	shouldRotate func() bool
	now          func() time.Time
	tick         time.Duration // Run's maintenance interval
	opTimeout    time.Duration // bound on each background store operation

	// mu serializes this process's changes to the store and swaps of cur,
	// so that a slow reload cannot replace a newer set with an older one.
	mu  sync.Mutex
	cur atomic.Pointer[compiled]

	// regressed is the *RegressionError last seen while the store holds an
	// older key set than cur, nil otherwise.
	regressed atomic.Pointer[RegressionError]
	// refused is why Reload last refused the stored set (undecodable, not
	// authenticated, or lacking a key this process needs), nil once it
	// adopts one.
	refused atomic.Pointer[error]
	// maintFailed is why scheduled maintenance (rotation, pruning) last
	// failed, nil since any successful write (see RotationOverdue).
	maintFailed atomic.Pointer[error]
	// poke wakes Run for maintenance (see Poke).
	poke chan struct{}
	// adm implements the Administrator methods on the set in use.
	adm administration
}

// RegressionError reports that the store holds a key set that is not a
// successor of the one a Manager uses: a lower version, none at all, or one
// that lacks a key the Manager still publishes (one that may have signed
// unexpired tokens, or that verifiers were told is coming). That happens when
// the store was deleted, replaced or restored from an old backup while tsidp
// ran, and perhaps written to since (a new history can reach the same
// version). Adopting or writing over it would drop keys that signed tokens
// still in circulation, so the Manager refuses to and keeps signing and
// publishing the keys it has.
type RegressionError struct {
	Stored     int64 // version in the store (0: empty)
	StoredKeys int
	InUse      int64 // version the Manager uses

	// Lost is set when the stored set is not older but lacks a key the
	// Manager publishes: that key's kid, algorithm and state.
	Lost          string
	LostAlgorithm Algorithm
	LostState     State
}

func (e *RegressionError) Error() string {
	if e.Lost != "" {
		return fmt.Sprintf("keys: the key store holds key set version %d, which lacks the %s %s key %s that this tsidp (version %d) still publishes: the store was replaced or restored from an older copy, and written since, while tsidp ran. "+
			"Refusing to adopt or write over it (that would drop a key that may have signed unexpired tokens); keeping the current keys (version %d) for signing and the JWKS. "+
			"Restore the newer key set, or restart tsidp to adopt the stored one", e.Stored, e.LostState, e.LostAlgorithm, e.Lost, e.InUse, e.InUse)
	}
	what := fmt.Sprintf("holds key set version %d (%d keys)", e.Stored, e.StoredKeys)
	if e.Stored == 0 && e.StoredKeys == 0 {
		what = "is empty"
	}
	return fmt.Sprintf("keys: the key store %s, but this tsidp uses version %d: the store was deleted, replaced or restored from an older copy while tsidp ran. "+
		"Refusing to write over it (that would drop keys that signed unexpired tokens); keeping the current keys (version %d) for signing and the JWKS. "+
		"Restore the newer key set, or restart tsidp to adopt the stored one", what, e.InUse, e.InUse)
}

// ErrStoreRegressed matches a *RegressionError with errors.Is.
var ErrStoreRegressed = errors.New("keys: the key store went back to an older key set")

func (e *RegressionError) Is(target error) bool { return target == ErrStoreRegressed }

// compiled is the immutable, ready-to-use form of one key set.
type compiled struct {
	set     *Set // never modified
	signers [numAlgorithms]*signer
	jwks    []byte
	etag    string
}

// ManagerOption configures a Manager.
type ManagerOption func(*Manager)

// WithShouldRotate makes Run perform scheduled writes (rotation, pruning)
// only while f reports true, e.g. while this replica holds leadership.
// Without it, every Manager rotates; with a single writer, that is right,
// and with several, compare-and-swap keeps it safe but wasteful.
func WithShouldRotate(f func() bool) ManagerOption {
	return func(m *Manager) { m.shouldRotate = f }
}

// WithClock makes the Manager read the time from now instead of
// time.Now: for tests and simulations that drive rotation by the clock.
func WithClock(now func() time.Time) ManagerOption {
	return func(m *Manager) { m.now = now }
}

// NewManager loads the key set from st, adds the keys p requires and
// compiles it. Adding keys writes to st (through Update); tools that only
// read, such as a key listing, should use Store.Load instead.
//
// p must be valid (see Policy.Validate). NewManager does not fill
// defaults, because zero can be meaningful (RotationPeriod). logf, which
// may be nil, receives one line per key event; lines name keys by kid and
// never hold private material.
func NewManager(ctx context.Context, st Store, p Policy, logf logger.Logf, opts ...ManagerOption) (*Manager, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if logf == nil {
		logf = logger.Discard
	}
	p.Algorithms = slices.Clone(p.Algorithms)
	m := &Manager{
		st:           st,
		p:            p,
		logf:         logf,
		shouldRotate: func() bool { return true },
		now:          time.Now,
		tick:         time.Minute,
		opTimeout:    time.Minute,
		poke:         make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(m)
	}
	m.adm = administration{
		p:       m.p,
		now:     func() time.Time { return m.now() },
		current: func(context.Context) (*Set, error) { return m.cur.Load().set, nil },
		update:  m.update,
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	set, err := Update(ctx, st, func(s *Set) error { return s.Ensure(m.now(), m.p) })
	if err != nil {
		return nil, err
	}
	if err := m.install(set); err != nil {
		return nil, err
	}
	return m, nil
}

// Policy returns the policy m enforces.
func (m *Manager) Policy() Policy {
	p := m.p
	p.Algorithms = slices.Clone(p.Algorithms)
	return p
}

// Sign appends to dst the compact JWS of payload signed with alg's active
// key, with "typ": "JWT", and returns it with the key's kid. payload is
// used as is: it should be the JSON claim set.
func (m *Manager) Sign(dst []byte, alg Algorithm, payload []byte) ([]byte, string, error) {
	return m.SignAs(dst, alg, TypeJWT, payload)
}

// SignAs is Sign with the given "typ".
func (m *Manager) SignAs(dst []byte, alg Algorithm, typ Type, payload []byte) ([]byte, string, error) {
	if typ < 0 || typ >= numTypes {
		return dst, "", fmt.Errorf("keys: unknown token type %d", typ)
	}
	i := alg.index()
	if i < 0 {
		return dst, "", fmt.Errorf("keys: unknown algorithm %q", alg)
	}
	s := m.cur.Load().signers[i]
	if s == nil {
		if !m.p.enabled(alg) {
			return dst, "", fmt.Errorf("keys: %s is not one of the configured algorithms %v", alg, m.p.Algorithms)
		}
		return dst, "", fmt.Errorf("keys: no active %s key", alg)
	}
	out, err := s.appendJWS(dst, typ, payload)
	if err != nil {
		return dst, "", err
	}
	return out, s.kid, nil
}

// JWKS returns the current JWKS document and its ETag. The body is shared:
// callers must not modify it.
func (m *Manager) JWKS() (body []byte, etag string) {
	c := m.cur.Load()
	return c.jwks, c.etag
}

// List returns every key, revoked tombstones included, and the status of
// the set in use.
func (m *Manager) List(ctx context.Context) ([]KeyInfo, Status, error) { return m.adm.List(ctx) }

// Version returns the store version of the key set m uses.
func (m *Manager) Version() int64 { return m.cur.Load().set.Version }

// Init adds the keys the policy asks for and the set lacks; NewManager
// did, so there is nothing to add unless the store lost keys since.
func (m *Manager) Init(ctx context.Context) ([]KeyInfo, error) { return m.adm.Init(ctx) }

// Rotate rotates the given algorithms (all configured ones if algs is
// empty) in one store update: all rotate or none does. Without force it
// fails with a *TooEarlyError if a next key has not been published long
// enough.
func (m *Manager) Rotate(ctx context.Context, algs []Algorithm, force bool) ([]KeyInfo, error) {
	return m.adm.Rotate(ctx, algs, force)
}

// Revoke revokes the key with the given kid; see Set.Revoke.
func (m *Manager) Revoke(ctx context.Context, kid string) ([]KeyInfo, error) {
	return m.adm.Revoke(ctx, kid)
}

// Import adds a private key given as PEM or JWK; see Administrator.Import.
func (m *Manager) Import(ctx context.Context, pemOrJWK []byte, alg Algorithm, activate bool) (KeyInfo, error) {
	return m.adm.Import(ctx, pemOrJWK, alg, activate)
}

// ExportJWKS returns a copy of the JWKS document m serves.
func (m *Manager) ExportJWKS(context.Context) ([]byte, error) {
	body, _ := m.JWKS()
	return slices.Clone(body), nil
}

// update applies fn through Update, installs the result and returns it.
// It refuses to write over a store that went back to an older set (see
// RegressionError).
func (m *Manager) update(ctx context.Context, fn change) (*Set, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	set, err := Update(ctx, m.st, func(s *Set) error {
		if err := m.checkRegression(s); err != nil {
			return err
		}
		return fn(s, m.now().UTC())
	})
	if err != nil {
		return nil, err
	}
	if err := m.install(set); err != nil {
		return nil, err
	}
	m.maintFailed.Store(nil) // the store takes writes again
	crashtest.Point(crashtest.Installed)
	return set, nil
}

// checkRegression returns a *RegressionError, and logs it, if the stored
// set s is not a successor of the one in use: older, or lacking a key the
// one in use publishes. Call with m.mu held.
func (m *Manager) checkRegression(s *Set) error {
	c := m.cur.Load()
	if c == nil {
		return nil
	}
	var e *RegressionError
	if s.Version < c.set.Version {
		e = &RegressionError{Stored: s.Version, StoredKeys: len(s.Keys), InUse: c.set.Version}
	} else if k := m.lostKey(c.set, s); k != nil {
		e = &RegressionError{Stored: s.Version, StoredKeys: len(s.Keys), InUse: c.set.Version,
			Lost: k.ID, LostAlgorithm: k.Algorithm, LostState: k.State}
	} else {
		return nil
	}
	m.regressed.Store(e)
	m.logf("keys: ALERT: %s", unprefixed(e))
	return e
}

// lostKey returns a key of cur that next lacks although no successor of cur
// may drop it, or nil. A successor keeps every key, except that it may prune
// a retired key once its recorded RemoveAt has passed (allowing for clock
// skew between the writer and this process; writers never prune earlier,
// whatever their configuration) and drop revoked tombstones. A revoked key
// stays as a tombstone, so revocation never looks like a loss.
func (m *Manager) lostKey(cur, next *Set) *Key {
	now := m.now().UTC()
	for _, k := range cur.Keys {
		switch {
		case k.State == StateRevoked, next.Key(k.ID) != nil:
		case k.State == StateRetired && !now.Add(m.p.ClockSkew).Before(k.RemoveAt):
		default:
			return k
		}
	}
	return nil
}

// Regression returns the *RegressionError seen last if the store is known
// to hold an older key set than the one in use, else nil. It clears once
// the store holds the set in use or a newer one.
func (m *Manager) Regression() error {
	if e := m.regressed.Load(); e != nil {
		return e
	}
	return nil
}

// Reload re-reads the store and, if the set changed, switches to it. A set
// older than the one in use (a lower version: the store was deleted or
// restored from an old copy) is not installed, and neither is a set lacking
// an active key for a configured algorithm: the current keys stay in use,
// so a deleted or truncated store cannot stop signing or unpublish keys.
func (m *Manager) Reload(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	set, err := m.st.Load(ctx)
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			// What the store holds now is unreadable, no longer older.
			m.regressed.Store(nil)
			m.refuse(err)
		}
		return err
	}
	if err := m.checkRegression(set); err != nil {
		return err
	}
	m.regressed.Store(nil)
	if c := m.cur.Load(); c != nil && c.set.sameAs(set) {
		m.refused.Store(nil)
		return nil
	}
	for _, alg := range m.p.Algorithms {
		if set.Active(alg) == nil {
			err := fmt.Errorf("keys: stored key set (version %d) has no active %s key; keeping the current keys", set.Version, alg)
			m.refuse(err)
			return err
		}
	}
	if err := m.install(set); err != nil {
		return err
	}
	m.refused.Store(nil)
	return nil
}

func (m *Manager) refuse(err error) {
	err = fmt.Errorf("keys: refusing the stored key set, still signing with version %d: %s", m.Version(), unprefixed(err))
	m.refused.Store(&err)
}

// Refusal returns why the last Reload refused the stored key set (it could
// not be decoded or authenticated, or lacks an active key for a configured
// algorithm), or nil once a stored set was adopted. Like Regression, it
// means the process serves with the keys it has while the store holds
// something it will not use.
func (m *Manager) Refusal() error {
	if e := m.refused.Load(); e != nil {
		return *e
	}
	return nil
}

// install compiles set and makes it current. Call with m.mu held.
func (m *Manager) install(set *Set) error {
	c, err := compile(set, m.p)
	if err != nil {
		return err
	}
	old := m.cur.Swap(c)
	m.logChanges(old, c)
	return nil
}

func compile(set *Set, p Policy) (*compiled, error) {
	if err := set.Check(); err != nil {
		return nil, err
	}
	c := &compiled{set: set}
	for _, alg := range p.Algorithms {
		k := set.Active(alg)
		if k == nil {
			continue
		}
		s, err := newSigner(k)
		if err != nil {
			return nil, err
		}
		c.signers[alg.index()] = s
	}
	c.jwks, c.etag = RenderJWKS(set)
	return c, nil
}

// logChanges logs how the key set changed from old (nil at start) to c:
// kids, algorithms, states and dates only.
func (m *Manager) logChanges(old, c *compiled) {
	if old == nil {
		var b strings.Builder
		for _, alg := range m.p.Algorithms {
			if s := c.signers[alg.index()]; s != nil {
				fmt.Fprintf(&b, "; %s signs with %s", alg, s.kid)
			}
		}
		m.logf("keys: using key set version %d with %d keys%s", c.set.Version, len(c.set.Keys), b.String())
		return
	}
	if old.set.Version != c.set.Version {
		m.logf("keys: key set version %d → %d", old.set.Version, c.set.Version)
	}
	for _, k := range c.set.Keys {
		switch o := old.set.Key(k.ID); {
		case o == nil:
			m.logf("keys: %s key %s added as %s", k.Algorithm, k.ID, k.State)
		case o.State != k.State:
			extra := ""
			switch k.State {
			case StateRetired:
				extra = fmt.Sprintf(" (published until %s)", k.removeAt(m.p).Format(time.RFC3339))
			case StateRevoked:
				extra = " (removed from the JWKS)"
			}
			m.logf("keys: %s key %s: %s → %s%s", k.Algorithm, k.ID, o.State, k.State, extra)
		}
	}
	for _, o := range old.set.Keys {
		if c.set.Key(o.ID) == nil {
			m.logf("keys: %s key %s (%s) removed from the set", o.Algorithm, o.ID, o.State)
		}
	}
}
