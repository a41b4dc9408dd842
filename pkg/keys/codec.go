package keys

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// FormatVersion is the version of the key set document that MarshalSet
// writes. A document with another format is refused rather than guessed at.
const FormatVersion = 1

// setDoc is the stored form of a Set:
//
//	{"format":1,"version":7,"keys":[{"kid":…,"alg":…,"state":…,
//	  "created":…,…,"public":{JWK},"private":{JWK}}]}
//
// Each key's public JWK is stored apart from its private half, so that a
// store can seal the private half ("sealed_private") while readers can
// still see which keys exist.
//
// A sealed document also carries "auth": a tag under the sealing key over
// the whole document (without "auth"), so that someone who can write to
// the store but does not hold the key-encryption key can neither plant a
// key nor change a key's state or dates.
type setDoc struct {
	Format  int      `json:"format"`
	Version int64    `json:"version"`
	Keys    []keyDoc `json:"keys"`
	Auth    []byte   `json:"auth,omitempty"`
}

type keyDoc struct {
	ID        string          `json:"kid"`
	Algorithm Algorithm       `json:"alg"`
	State     State           `json:"state"`
	Created   time.Time       `json:"created"`
	Published time.Time       `json:"published,omitzero"`
	SignsFrom time.Time       `json:"signs_from,omitzero"`
	Activated time.Time       `json:"activated,omitzero"`
	Retired   time.Time       `json:"retired,omitzero"`
	RemoveAt  time.Time       `json:"remove_at,omitzero"`
	Revoked   time.Time       `json:"revoked,omitzero"`
	Public    json.RawMessage `json:"public"`
	Private   json.RawMessage `json:"private,omitempty"`
	Sealed    []byte          `json:"sealed_private,omitempty"`
}

// MarshalSet encodes s with its private keys as cleartext JWKs, refusing a
// set that fails Check. Protect the result accordingly: the file store
// keeps it 0600 in a 0700 directory.
func MarshalSet(s *Set) ([]byte, error) { return marshalSet(s, nil) }

// MarshalSealedSet encodes s with every private key sealed by sl. Public
// keys and lifecycle dates stay readable.
func MarshalSealedSet(s *Set, sl Sealer) ([]byte, error) {
	if sl == nil {
		return nil, errors.New("keys: MarshalSealedSet needs a Sealer")
	}
	return marshalSet(s, sl)
}

// UnmarshalSet decodes a document written by MarshalSet and checks the
// set's invariants. Decoding problems wrap ErrCorrupt. A document with
// sealed private keys needs UnmarshalSealedSet.
func UnmarshalSet(data []byte) (*Set, error) { return unmarshalSet(data, nil, "") }

// UnmarshalSealedSet decodes a document written by MarshalSealedSet, opening
// private keys with sl. It refuses a document whose authentication tag does
// not verify under sl, and any cleartext private key: a store that seals
// must not take keys from someone who merely can write to it.
func UnmarshalSealedSet(data []byte, sl Sealer) (*Set, error) {
	if sl == nil {
		return nil, errors.New("keys: UnmarshalSealedSet needs a Sealer")
	}
	return unmarshalSet(data, sl, "")
}

// sealAD is the additional data that binds a sealed private key to its
// entry: the format and the kid.
func sealAD(kid string) []byte { return []byte("tsidp keys v1 private " + kid) }

// docAD is the additional data whose tag authenticates a whole sealed
// document: its compact JSON encoding without "auth". The document's
// values are re-encoded on reading, so formatting does not matter.
func docAD(doc *setDoc) ([]byte, error) {
	d := *doc
	d.Auth = nil
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	return append([]byte("tsidp keys v1 document\n"), b...), nil
}

func marshalSet(s *Set, sl Sealer) ([]byte, error) {
	// Never write what could not be read back: a store holding such a
	// document would stop every reader.
	if err := s.Check(); err != nil {
		return nil, wrapf(err, "refusing to encode an inconsistent key set")
	}
	ks := slices.Clone(s.Keys)
	slices.SortFunc(ks, compareKeys)
	doc := setDoc{Format: FormatVersion, Version: s.Version, Keys: make([]keyDoc, 0, len(ks))}
	for _, k := range ks {
		d, err := encodeKey(k, sl)
		if err != nil {
			return nil, err
		}
		doc.Keys = append(doc.Keys, d)
	}
	if sl != nil {
		ad, err := docAD(&doc)
		if err != nil {
			return nil, fmt.Errorf("keys: encoding key set: %w", err)
		}
		if doc.Auth, err = sl.Seal(nil, ad); err != nil {
			return nil, fmt.Errorf("keys: authenticating key set: %w", err)
		}
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("keys: encoding key set: %w", err)
	}
	return append(b, '\n'), nil
}

func encodeKey(k *Key, sl Sealer) (keyDoc, error) {
	pj, err := publicJWKOf(k.Public)
	if err != nil {
		return keyDoc{}, wrapf(err, "key %s", k.ID)
	}
	d := keyDoc{
		ID:        k.ID,
		Algorithm: k.Algorithm,
		State:     k.State,
		Created:   k.Created,
		Published: k.Published,
		SignsFrom: k.SignsFrom,
		Activated: k.Activated,
		Retired:   k.Retired,
		RemoveAt:  k.RemoveAt,
		Revoked:   k.Revoked,
		Public:    pj.appendJSON(nil, k.ID, k.Algorithm),
	}
	if k.Private == nil || k.State == StateRevoked {
		return d, nil
	}
	priv, err := jose.JSONWebKey{Key: k.Private, KeyID: k.ID, Algorithm: string(k.Algorithm), Use: "sig"}.MarshalJSON()
	if err != nil {
		return keyDoc{}, fmt.Errorf("keys: encoding private key %s: %w", k.ID, err)
	}
	if sl == nil {
		d.Private = priv
		return d, nil
	}
	d.Sealed, err = sl.Seal(priv, sealAD(k.ID))
	clear(priv)
	if err != nil {
		return keyDoc{}, fmt.Errorf("keys: sealing private key %s: %w", k.ID, err)
	}
	return d, nil
}

// corruptError reports an undecodable or inconsistent stored set. It
// matches ErrCorrupt and the underlying error.
type corruptError struct {
	where string // e.g. the file name; may be empty
	err   error
}

func (e *corruptError) Error() string {
	msg := unprefixed(e.err)
	if e.where == "" {
		return "keys: corrupt key set: " + msg
	}
	return "keys: " + e.where + ": corrupt key set: " + msg
}

func (e *corruptError) Unwrap() []error { return []error{ErrCorrupt, e.err} }

// unmarshalSet decodes data; where names its origin in errors.
func unmarshalSet(data []byte, sl Sealer, where string) (*Set, error) {
	corrupt := func(format string, args ...any) error {
		return &corruptError{where, fmt.Errorf(format, args...)}
	}
	// Read the format first: a newer format may have fields the strict
	// decode below would report as unknown, which would hide the reason.
	// json.Unmarshal also rejects trailing data after the document.
	var head struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, corrupt("%w", err)
	}
	switch {
	case head.Format == 0:
		return nil, corrupt("no \"format\" member")
	case head.Format != FormatVersion:
		return nil, fmt.Errorf("keys: %skey set format %d is not supported (this tsidp reads format %d); was it written by a newer tsidp?", prefixWhere(where), head.Format, FormatVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc setDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, corrupt("%w", err)
	}
	if doc.Version < 0 {
		return nil, corrupt("negative version %d", doc.Version)
	}
	switch {
	case sl == nil && doc.Auth != nil:
		return nil, fmt.Errorf("keys: %sthe key set is sealed; reading it needs the sealing key", prefixWhere(where))
	case sl != nil && doc.Auth == nil:
		return nil, corrupt("the document is not authenticated under the sealing key (was it written by hand or without one?); refusing its keys")
	case sl != nil:
		ad, err := docAD(&doc)
		if err != nil {
			return nil, corrupt("%w", err)
		}
		if _, err := sl.Open(doc.Auth, ad); err != nil {
			return nil, corrupt("the document's authentication does not verify: wrong sealing key, or the document was changed outside tsidp")
		}
	}
	set := &Set{Version: doc.Version, Keys: make([]*Key, 0, len(doc.Keys))}
	for i, d := range doc.Keys {
		k, err := decodeKey(d, sl)
		if errors.Is(err, errNeedSealer) {
			return nil, fmt.Errorf("keys: %sthe key set holds sealed private keys; reading it needs the sealing key", prefixWhere(where))
		}
		if err != nil {
			return nil, &corruptError{where, wrapf(err, "key #%d (%s)", i, d.ID)}
		}
		set.Keys = append(set.Keys, k)
	}
	slices.SortFunc(set.Keys, compareKeys)
	if err := set.Check(); err != nil {
		return nil, &corruptError{where, err}
	}
	return set, nil
}

func prefixWhere(where string) string {
	if where == "" {
		return ""
	}
	return where + ": "
}

var errNeedSealer = errors.New("sealed private key but no Sealer")

func decodeKey(d keyDoc, sl Sealer) (*Key, error) {
	var pj jose.JSONWebKey
	if err := pj.UnmarshalJSON(d.Public); err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if !pj.IsPublic() {
		return nil, errors.New("the public member holds private material")
	}
	k := &Key{
		ID:        d.ID,
		Algorithm: d.Algorithm,
		State:     d.State,
		Created:   d.Created,
		Published: d.Published,
		SignsFrom: d.SignsFrom,
		Activated: d.Activated,
		Retired:   d.Retired,
		RemoveAt:  d.RemoveAt,
		Revoked:   d.Revoked,
		Public:    pj.Key,
	}
	privJSON := []byte(d.Private)
	switch {
	case len(d.Private) > 0 && d.Sealed != nil:
		return nil, errors.New("both a cleartext and a sealed private key")
	case len(d.Private) > 0 && sl != nil:
		return nil, errors.New("cleartext private key in a sealed store")
	case d.Sealed != nil:
		if sl == nil {
			return nil, errNeedSealer
		}
		var err error
		if privJSON, err = sl.Open(d.Sealed, sealAD(d.ID)); err != nil {
			return nil, err
		}
		defer clear(privJSON)
	}
	if len(privJSON) == 0 {
		return k, nil
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(privJSON); err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	signer, ok := jwk.Key.(crypto.Signer)
	if !ok || jwk.IsPublic() {
		return nil, errors.New("the private member holds no private key")
	}
	signer, err := normalizePrivate(signer)
	if err != nil {
		return nil, err
	}
	k.Private = signer
	return k, nil
}
