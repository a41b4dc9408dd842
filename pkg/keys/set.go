package keys

import (
	"crypto"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Set is the whole key set of a deployment, as one store document.
//
// The lifecycle methods (Ensure, Rotate, Revoke, Prune, Import) are pure
// functions of the set, the time and the Policy: they do no I/O, and on error
// they leave the set unchanged. Persist changes with Update.
type Set struct {
	// Version is the store version the set was loaded at; 0 for a set that
	// was never saved. Stores compare it to detect concurrent writers.
	Version int64
	// Keys holds every key, in the order of compareKeys.
	Keys []*Key
}

// Errors callers may test for with errors.Is.
var (
	// ErrConflict means the store changed since the set was loaded.
	ErrConflict = errors.New("version conflict: the key set was changed by another writer")
	// ErrUnknownKey means no key has the given kid.
	ErrUnknownKey = errors.New("no key has that kid")
	// ErrCorrupt means a stored key set could not be decoded or breaks the
	// set's invariants.
	ErrCorrupt = errors.New("corrupt key set")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("store closed")
)

// Key returns the key with the given kid, or nil.
func (s *Set) Key(kid string) *Key {
	for _, k := range s.Keys {
		if k.ID == kid {
			return k
		}
	}
	return nil
}

// Active returns the active key for alg, or nil.
func (s *Set) Active(alg Algorithm) *Key { return s.find(alg, StateActive) }

// Next returns the next key for alg, or nil.
func (s *Set) Next(alg Algorithm) *Key { return s.find(alg, StateNext) }

func (s *Set) find(alg Algorithm, st State) *Key {
	for _, k := range s.Keys {
		if k.Algorithm == alg && k.State == st {
			return k
		}
	}
	return nil
}

// Clone returns a copy of s whose keys can be changed without affecting s.
// Key material is immutable and shared.
func (s *Set) Clone() *Set {
	c := &Set{Version: s.Version, Keys: make([]*Key, len(s.Keys))}
	for i, k := range s.Keys {
		kc := *k
		c.Keys[i] = &kc
	}
	return c
}

// List returns the listing entries of all keys, including revoked
// tombstones, under policy p.
func (s *Set) List(p Policy) []KeyInfo {
	ks := slices.Clone(s.Keys)
	slices.SortFunc(ks, compareKeys)
	out := make([]KeyInfo, len(ks))
	for i, k := range ks {
		out[i] = k.Info(p)
	}
	return out
}

// Check reports the first broken invariant of s:
//
//   - kids are unique and each is the RFC 7638 thumbprint of its key;
//   - each key fits its algorithm and has a known state and the dates
//     that state implies;
//   - revoked keys hold no private key; all others hold one that matches
//     their public key;
//   - per algorithm, at most one next key, and exactly one active key as
//     soon as the algorithm has an active or next key.
func (s *Set) Check() error {
	var active, next [numAlgorithms]int
	seen := make(map[string]bool, len(s.Keys))
	for i, k := range s.Keys {
		if k == nil {
			return fmt.Errorf("keys: key #%d is empty", i)
		}
		if err := k.check(); err != nil {
			return err
		}
		if seen[k.ID] {
			return fmt.Errorf("keys: kid %s appears more than once", k.ID)
		}
		seen[k.ID] = true
		switch k.State {
		case StateActive:
			active[k.Algorithm.index()]++
		case StateNext:
			next[k.Algorithm.index()]++
		}
	}
	for _, alg := range Algorithms() {
		i := alg.index()
		switch {
		case active[i] > 1:
			return fmt.Errorf("keys: %d active %s keys; want exactly one", active[i], alg)
		case next[i] > 1:
			return fmt.Errorf("keys: %d next %s keys; want at most one", next[i], alg)
		case next[i] == 1 && active[i] == 0:
			return fmt.Errorf("keys: %s has a next key but no active key", alg)
		}
	}
	return nil
}

// check reports whether k is well-formed on its own.
func (k *Key) check() error {
	if !k.Algorithm.Valid() {
		return fmt.Errorf("keys: key %s: unknown algorithm %q", k.ID, k.Algorithm)
	}
	if !k.State.Valid() {
		return fmt.Errorf("keys: key %s: unknown state %q", k.ID, k.State)
	}
	if k.Public == nil {
		return fmt.Errorf("keys: key %s has no public key", k.ID)
	}
	if err := checkFits(k.Algorithm, k.Public); err != nil {
		return wrapf(err, "key %s", k.ID)
	}
	tp, err := thumbprint(k.Public)
	if err != nil {
		return wrapf(err, "key %s", k.ID)
	}
	if tp != k.ID {
		return fmt.Errorf("keys: key %q: kid is not the RFC 7638 thumbprint of its public key (%s)", k.ID, tp)
	}
	if k.State == StateRevoked {
		if k.Private != nil {
			return fmt.Errorf("keys: revoked key %s still holds its private key", k.ID)
		}
	} else {
		if k.Private == nil {
			return fmt.Errorf("keys: %s key %s has no private key", k.State, k.ID)
		}
		if !publicEqual(k.Private.Public(), k.Public) {
			return fmt.Errorf("keys: key %s: private key does not match public key", k.ID)
		}
	}
	var missing string
	switch {
	case k.Created.IsZero():
		missing = "created"
	case k.Published.IsZero():
		missing = "published"
	case k.State == StateActive && k.Activated.IsZero():
		missing = "activated"
	case k.State == StateRetired && k.Retired.IsZero():
		missing = "retired"
	case k.State == StateRevoked && k.Revoked.IsZero():
		missing = "revoked"
	}
	if missing != "" {
		return fmt.Errorf("keys: %s key %s has no %s time", k.State, k.ID, missing)
	}
	return nil
}

func publicEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// sameAs reports whether s and o hold the same keys with the same states
// and dates. Key material is immutable per kid, so it is not compared
// beyond whether a private key is present.
func (s *Set) sameAs(o *Set) bool {
	if s.Version != o.Version || len(s.Keys) != len(o.Keys) {
		return false
	}
	for i, a := range s.Keys {
		b := o.Keys[i]
		if a.ID != b.ID || a.Algorithm != b.Algorithm || a.State != b.State ||
			!a.Created.Equal(b.Created) || !a.Published.Equal(b.Published) ||
			!a.SignsFrom.Equal(b.SignsFrom) || !a.Activated.Equal(b.Activated) ||
			!a.Retired.Equal(b.Retired) || !a.RemoveAt.Equal(b.RemoveAt) ||
			!a.Revoked.Equal(b.Revoked) || (a.Private == nil) != (b.Private == nil) {
			return false
		}
	}
	return true
}

// edit applies f to a copy of s and, if f succeeds and the result passes
// Check, makes the copy's keys s's keys. So lifecycle methods either
// succeed completely or leave s as it was.
func (s *Set) edit(f func(c *Set) error) error {
	c := s.Clone()
	if err := f(c); err != nil {
		return err
	}
	slices.SortFunc(c.Keys, compareKeys)
	if err := c.Check(); err != nil {
		return err
	}
	s.Keys = c.Keys
	return nil
}

// generate adds a new next key for alg, published at now.
func (s *Set) generate(now time.Time, p Policy, alg Algorithm) (*Key, error) {
	priv, err := generateKey(alg, p.RSABits)
	if err != nil {
		return nil, fmt.Errorf("keys: generating %s key: %w", alg, err)
	}
	k, err := newKey(now, p, alg, priv)
	if err != nil {
		return nil, err
	}
	if s.Key(k.ID) != nil {
		return nil, fmt.Errorf("keys: generated %s key %s is already in the set", alg, k.ID)
	}
	s.Keys = append(s.Keys, k)
	return k, nil
}

func (s *Set) remove(k *Key) {
	s.Keys = slices.DeleteFunc(s.Keys, func(x *Key) bool { return x == k })
}
