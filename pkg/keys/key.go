package keys

import (
	"cmp"
	"crypto"
	"strings"
	"time"
)

// Key is one signing key and its lifecycle dates. All times are UTC; a zero
// time means the event has not happened.
type Key struct {
	// ID is the kid: the RFC 7638 thumbprint of the public key.
	ID        string
	Algorithm Algorithm
	State     State

	// Created is when the key entered the set.
	Created time.Time
	// Published is when the key first appeared in the JWKS.
	Published time.Time
	// SignsFrom is the earliest time the key may become active without
	// force, recorded at publication as Published + JWKSMaxAge + ClockSkew.
	SignsFrom time.Time
	// Activated is when the key started signing.
	Activated time.Time
	// Retired is when the key stopped signing.
	Retired time.Time
	// RemoveAt is when a retired key may leave the JWKS, recorded at
	// retirement as Retired + MaxTokenTTL + ClockSkew.
	RemoveAt time.Time
	// Revoked is when the key was revoked.
	Revoked time.Time

	// Public is the public key: *ecdsa.PublicKey, *rsa.PublicKey or
	// ed25519.PublicKey.
	Public crypto.PublicKey
	// Private is the private key (*ecdsa.PrivateKey, *rsa.PrivateKey or
	// ed25519.PrivateKey). It is nil for revoked keys.
	Private crypto.Signer
}

// newKey returns a next key for priv, published at now.
func newKey(now time.Time, p Policy, alg Algorithm, priv crypto.Signer) (*Key, error) {
	pub := priv.Public()
	if err := checkFits(alg, pub); err != nil {
		return nil, err
	}
	kid, err := thumbprint(pub)
	if err != nil {
		return nil, err
	}
	return &Key{
		ID:        kid,
		Algorithm: alg,
		State:     StateNext,
		Created:   now,
		Published: now,
		SignsFrom: now.Add(p.publishLead()),
		Public:    pub,
		Private:   priv,
	}, nil
}

// signsFrom is when k may start signing without force. Both the recorded
// value and the current policy must allow it, so raising jwks_max_age
// postpones rotation rather than breaking the guarantee for verifiers that
// cached the JWKS under the new, longer max-age.
func (k *Key) signsFrom(p Policy) time.Time {
	return later(k.SignsFrom, k.Published.Add(p.publishLead()))
}

// removeAt is when a retired k may leave the JWKS. As with signsFrom, the
// later of the recorded and the currently implied time wins, so a config
// change can only keep keys longer.
func (k *Key) removeAt(p Policy) time.Time {
	return later(k.RemoveAt, k.Retired.Add(p.retention()))
}

func (k *Key) activate(now time.Time) {
	k.State = StateActive
	k.Activated = now
}

func (k *Key) retire(now time.Time, p Policy) {
	k.State = StateRetired
	k.Retired = now
	k.RemoveAt = now.Add(p.retention())
}

func (k *Key) revoke(now time.Time) {
	k.State = StateRevoked
	k.Revoked = now
	k.Private = nil // the point of revoking: never sign with it again
}

// Info returns the listing entry for k under policy p.
func (k *Key) Info(p Policy) KeyInfo {
	ki := KeyInfo{
		ID:          k.ID,
		Algorithm:   k.Algorithm,
		State:       k.State,
		KeyType:     describeKey(k.Public),
		Created:     k.Created,
		PublishedAt: k.Published,
		Activated:   k.Activated,
		Retired:     k.Retired,
		Revoked:     k.Revoked,
	}
	switch k.State {
	case StateNext:
		ki.SignsFrom = k.signsFrom(p)
	case StateRetired:
		ki.RemoveAt = k.removeAt(p)
	}
	return ki
}

// KeyInfo describes a key for listings such as `tsidp keys list --json`. It
// never holds private material. Zero times are omitted from JSON.
type KeyInfo struct {
	ID        string    `json:"kid"`
	Algorithm Algorithm `json:"algorithm"`
	State     State     `json:"state"`
	// KeyType is e.g. "EC P-256", "RSA-2048" or "Ed25519".
	KeyType     string    `json:"key_type"`
	Created     time.Time `json:"created,omitzero"`
	PublishedAt time.Time `json:"published_at,omitzero"`
	Activated   time.Time `json:"activated,omitzero"`
	Retired     time.Time `json:"retired,omitzero"`
	Revoked     time.Time `json:"revoked,omitzero"`
	// SignsFrom is, for a next key, the earliest time it may become active
	// without force.
	SignsFrom time.Time `json:"signs_from,omitzero"`
	// RemoveAt is, for a retired key, when it leaves the JWKS.
	RemoveAt time.Time `json:"remove_at,omitzero"`
}

// compareKeys orders keys for storage and listings: by algorithm, then
// state (active, next, retired, revoked), then newest first.
func compareKeys(a, b *Key) int {
	return cmp.Or(
		cmp.Compare(a.Algorithm.index(), b.Algorithm.index()),
		cmp.Compare(a.State.rank(), b.State.rank()),
		b.Created.Compare(a.Created),
		strings.Compare(a.ID, b.ID),
	)
}

// compareForJWKS orders keys for the JWKS: every active key first, so that
// verifiers which ignore kid and take the first key of a type find the
// signing one, then next and retired keys.
func compareForJWKS(a, b *Key) int {
	return cmp.Or(
		cmp.Compare(a.State.rank(), b.State.rank()),
		cmp.Compare(a.Algorithm.index(), b.Algorithm.index()),
		b.Created.Compare(a.Created),
		strings.Compare(a.ID, b.ID),
	)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
