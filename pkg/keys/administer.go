package keys

import (
	"context"
	"fmt"
	"time"
)

// Administrator is key administration, as `tsidp keys` and the admin API
// offer it: one method per operation. Three types implement it: *Manager
// (the keys of this running process), *Offline (a store no daemon serves)
// and *admin.Client (a daemon, through its admin socket). Package admin
// chooses between the last two for the CLI. Each change returns the
// listing after it.
//
// Every operation is defined once, in administration, over where the set
// lives; so the daemon and the offline CLI cannot disagree about what an
// operation does to a set.
type Administrator interface {
	// List returns every key, revoked tombstones included, and the
	// status of the set.
	List(ctx context.Context) ([]KeyInfo, Status, error)
	// Init adds the keys the policy asks for and the set lacks: all of
	// them for a store that holds no key set yet.
	Init(ctx context.Context) ([]KeyInfo, error)
	// Rotate rotates the given algorithms (all configured ones if algs is
	// empty) in one store update: all rotate or none does. Without force
	// it fails with a *TooEarlyError while a next key has not been
	// published long enough (see Set.Rotate).
	Rotate(ctx context.Context, algs []Algorithm, force bool) ([]KeyInfo, error)
	// Revoke revokes the key with the given kid (see Set.Revoke).
	Revoke(ctx context.Context, kid string) ([]KeyInfo, error)
	// Import adds a private key given as PEM or JWK (see Set.Import):
	// the next key of its algorithm, or the active one with activate or
	// when the algorithm has no active key yet (a store that holds no key
	// set: migrating an issuer before tsidp's first start).
	Import(ctx context.Context, pemOrJWK []byte, alg Algorithm, activate bool) (KeyInfo, error)
	// ExportJWKS returns the public JWKS document of the set.
	ExportJWKS(ctx context.Context) ([]byte, error)
}

var (
	_ Administrator = (*Manager)(nil)
	_ Administrator = (*Offline)(nil)
)

// change is one administrative change to a set at time now. It may run
// several times (see Update) and must only change the set it is given.
type change func(s *Set, now time.Time) error

// administration implements Administrator over where a key set lives:
// current returns it as it is, update applies a change and persists it.
type administration struct {
	p       Policy
	now     func() time.Time
	current func(ctx context.Context) (*Set, error)
	update  func(ctx context.Context, fn change) (*Set, error)
}

func (a *administration) List(ctx context.Context) ([]KeyInfo, Status, error) {
	set, err := a.current(ctx)
	if err != nil {
		return nil, Status{}, err
	}
	return set.List(a.p), StatusOf(set, a.p, a.now()), nil
}

func (a *administration) Init(ctx context.Context) ([]KeyInfo, error) {
	return a.apply(ctx, func(s *Set, now time.Time) error { return s.Ensure(now, a.p) })
}

func (a *administration) Rotate(ctx context.Context, algs []Algorithm, force bool) ([]KeyInfo, error) {
	if len(algs) == 0 {
		algs = a.p.Algorithms
	}
	for _, alg := range algs {
		if !a.p.enabled(alg) {
			return nil, fmt.Errorf("keys: cannot rotate %s: it is not one of the configured algorithms %v", alg, a.p.Algorithms)
		}
	}
	return a.apply(ctx, func(s *Set, now time.Time) error {
		// A new algorithm gets its keys first, as the daemon gives them
		// at start.
		if err := s.Ensure(now, a.p); err != nil {
			return err
		}
		for _, alg := range algs {
			if err := s.Rotate(now, a.p, alg, force); err != nil {
				return err
			}
		}
		return nil
	})
}

func (a *administration) Revoke(ctx context.Context, kid string) ([]KeyInfo, error) {
	return a.apply(ctx, func(s *Set, now time.Time) error { return s.Revoke(now, a.p, kid) })
}

func (a *administration) Import(ctx context.Context, pemOrJWK []byte, alg Algorithm, activate bool) (KeyInfo, error) {
	priv, err := ParsePrivateKey(pemOrJWK, alg)
	if err != nil {
		return KeyInfo{}, err
	}
	var kid string
	set, err := a.update(ctx, func(s *Set, now time.Time) error {
		// Import first, then add what is missing: into a store that holds
		// no key set, the imported key becomes its algorithm's active key.
		k, err := s.Import(now, a.p, priv, alg, activate)
		if err != nil {
			return err
		}
		kid = k.ID
		return s.Ensure(now, a.p)
	})
	if err != nil {
		return KeyInfo{}, err
	}
	return set.Key(kid).Info(a.p), nil
}

func (a *administration) ExportJWKS(ctx context.Context) ([]byte, error) {
	set, err := a.current(ctx)
	if err != nil {
		return nil, err
	}
	body, _ := RenderJWKS(set)
	return body, nil
}

// apply runs fn through update and lists the result.
func (a *administration) apply(ctx context.Context, fn change) ([]KeyInfo, error) {
	set, err := a.update(ctx, fn)
	if err != nil {
		return nil, err
	}
	return set.List(a.p), nil
}

// Offline administers the key set in a Store that no running daemon
// serves, as `tsidp keys` does when no daemon answers on the admin socket.
// Every change is an Update: a compare-and-swap under the store's lock,
// which never loses a concurrent writer's update (another CLI, or a
// replica elsewhere). A tsidp running on the store picks the change up the
// next time it reads the store.
type Offline struct {
	administration
}

// NewOffline returns the Administrator of the set in st under policy p.
// now is the clock of every change; nil means time.Now.
func NewOffline(st Store, p Policy, now func() time.Time) *Offline {
	if now == nil {
		now = time.Now
	}
	return &Offline{administration{
		p:       p,
		now:     now,
		current: st.Load,
		update: func(ctx context.Context, fn change) (*Set, error) {
			return Update(ctx, st, func(s *Set) error { return fn(s, now().UTC()) })
		},
	}}
}
