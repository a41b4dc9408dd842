package keys

import (
	"fmt"
	"slices"
	"time"

	"github.com/tsidp/tsidp/internal/duration"
)

// Ensure makes every algorithm of p have exactly one active and one next
// key, generating what is missing. An algorithm without an active key gets
// one that signs at once: either its next key, or for an algorithm new to
// the set a fresh key, which no verifier can have cached anyway. Keys of
// algorithms not in p are left alone; they stay published until revoked or,
// when retired, pruned.
func (s *Set) Ensure(now time.Time, p Policy) error {
	now = now.UTC()
	return s.edit(func(c *Set) error {
		for _, alg := range p.Algorithms {
			if err := c.ensure(now, p, alg); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Set) ensure(now time.Time, p Policy, alg Algorithm) error {
	if s.Active(alg) == nil {
		k := s.Next(alg)
		if k == nil {
			var err error
			if k, err = s.generate(now, p, alg); err != nil {
				return err
			}
		}
		k.activate(now)
	}
	if s.Next(alg) == nil {
		if _, err := s.generate(now, p, alg); err != nil {
			return err
		}
	}
	return nil
}

// TooEarlyError is returned by Rotate when the next key has not been
// published long enough for every verifier's cached JWKS to contain it.
type TooEarlyError struct {
	Algorithm Algorithm
	KID       string // the next key
	Published time.Time
	SignsFrom time.Time // rotation is allowed from then
	Now       time.Time

	maxAge, skew time.Duration
}

func (e *TooEarlyError) Error() string {
	return fmt.Sprintf("keys: not rotating %s yet: next key %s was published at %s and verifiers may cache the JWKS for jwks_max_age %s + clock_skew %s; rotation is allowed from %s (in %s), or now with --force",
		e.Algorithm, e.KID, e.Published.Format(time.RFC3339), duration.Format(e.maxAge), duration.Format(e.skew),
		e.SignsFrom.Format(time.RFC3339), duration.Format(e.SignsFrom.Sub(e.Now).Round(time.Second)))
}

// Rotate makes alg's next key active, retires the active key (it stays
// published until RemoveAt, when every token it signed has expired) and
// adds a new next key. Unless force is set, it refuses with a
// *TooEarlyError while the next key has been published for less than
// JWKSMaxAge+ClockSkew.
func (s *Set) Rotate(now time.Time, p Policy, alg Algorithm, force bool) error {
	now = now.UTC()
	if !p.enabled(alg) {
		return fmt.Errorf("keys: cannot rotate %s: it is not one of the configured algorithms %v", alg, p.Algorithms)
	}
	act, next := s.Active(alg), s.Next(alg)
	if act == nil || next == nil {
		return fmt.Errorf("keys: cannot rotate %s: the set has no active or no next key for it", alg)
	}
	if sf := next.signsFrom(p); !force && now.Before(sf) {
		return &TooEarlyError{
			Algorithm: alg, KID: next.ID, Published: next.Published, SignsFrom: sf, Now: now,
			maxAge: p.JWKSMaxAge, skew: p.ClockSkew,
		}
	}
	return s.edit(func(c *Set) error {
		c.Active(alg).retire(now, p)
		c.Next(alg).activate(now)
		_, err := c.generate(now, p, alg)
		return err
	})
}

// Revoke withdraws the key with the given kid: it leaves the JWKS at once
// and its private key is discarded. If it was active, the next key (already
// published) becomes active immediately, so new tokens keep verifying for
// verifiers with a current JWKS, and a new next key is generated; if it was
// next, a new next key replaces it. Revoking a revoked key does nothing. An
// unknown kid is an error wrapping ErrUnknownKey.
func (s *Set) Revoke(now time.Time, p Policy, kid string) error {
	now = now.UTC()
	if k := s.Key(kid); k == nil {
		return fmt.Errorf("keys: cannot revoke %q: %w", kid, ErrUnknownKey)
	} else if k.State == StateRevoked {
		return nil
	}
	return s.edit(func(c *Set) error {
		k := c.Key(kid)
		was := k.State
		k.revoke(now)
		if was != StateActive && was != StateNext {
			return nil
		}
		if p.enabled(k.Algorithm) {
			return c.ensure(now, p, k.Algorithm)
		}
		// An algorithm no longer configured gets no new keys; keep a
		// next key signing if there is one.
		if was == StateActive {
			if n := c.Next(k.Algorithm); n != nil {
				n.activate(now)
			}
		}
		return nil
	})
}

// Prune drops retired keys whose RemoveAt has passed and revoked tombstones
// older than RevokedRetention, and reports how many keys it dropped.
func (s *Set) Prune(now time.Time, p Policy) int {
	n := len(s.Keys)
	// A new slice, so that anyone holding the old one sees no change.
	s.Keys = slices.DeleteFunc(slices.Clone(s.Keys), func(k *Key) bool { return k.prunable(now, p) })
	return n - len(s.Keys)
}

func (k *Key) prunable(now time.Time, p Policy) bool {
	switch k.State {
	case StateRetired:
		return !now.Before(k.removeAt(p))
	case StateRevoked:
		return !now.Before(k.Revoked.Add(RevokedRetention))
	}
	return false
}
