package keys

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// ParsePrivateKey parses a private key for alg from PEM (PKCS#8 "PRIVATE
// KEY", PKCS#1 "RSA PRIVATE KEY" or SEC 1 "EC PRIVATE KEY"; an "EC
// PARAMETERS" block as written by openssl is skipped) or from a private JWK,
// and checks that it fits alg: RSA of at least 2048 bits for RS256, P-256
// for ES256, Ed25519 for EdDSA.
func ParsePrivateKey(pemOrJWK []byte, alg Algorithm) (crypto.Signer, error) {
	if !alg.Valid() {
		return nil, fmt.Errorf("keys: unknown algorithm %q", alg)
	}
	var priv crypto.Signer
	var err error
	if t := bytes.TrimSpace(pemOrJWK); len(t) > 0 && t[0] == '{' {
		priv, err = parseJWK(t, alg)
	} else {
		priv, err = parsePEM(pemOrJWK)
	}
	if err != nil {
		return nil, err
	}
	if priv, err = normalizePrivate(priv); err != nil {
		return nil, err
	}
	if err := checkFits(alg, priv.Public()); err != nil {
		return nil, err
	}
	return priv, nil
}

func parseJWK(data []byte, alg Algorithm) (crypto.Signer, error) {
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		// go-jose refuses RSA moduli over 4096 bits with a vague error.
		var raw struct {
			Kty string `json:"kty"`
			N   string `json:"n"`
		}
		if json.Unmarshal(data, &raw) == nil && raw.Kty == "RSA" {
			if n, derr := base64.RawURLEncoding.DecodeString(raw.N); derr == nil {
				if bits := new(big.Int).SetBytes(n).BitLen(); bits > maxRSABits {
					return nil, fmt.Errorf("keys: RS256 needs an RSA key of %d to %d bits, got %d bits", minRSABits, maxRSABits, bits)
				}
			}
		}
		return nil, fmt.Errorf("keys: parsing JWK: %w", err)
	}
	if jwk.IsPublic() {
		return nil, errors.New("keys: the JWK holds a public key; importing needs the private key")
	}
	if jwk.Algorithm != "" && jwk.Algorithm != string(alg) {
		return nil, fmt.Errorf("keys: the JWK is for alg %q, not %s", jwk.Algorithm, alg)
	}
	if jwk.Use != "" && jwk.Use != "sig" {
		return nil, fmt.Errorf("keys: the JWK is for use %q, not \"sig\"", jwk.Use)
	}
	priv, ok := jwk.Key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("keys: unsupported JWK key type %T", jwk.Key)
	}
	return priv, nil
}

func parsePEM(data []byte) (crypto.Signer, error) {
	var found *pem.Block
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "EC PARAMETERS":
			continue
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("keys: the PEM key is encrypted; decrypt it first (e.g. openssl pkey -in key.pem -out plain.pem)")
		default:
			return nil, fmt.Errorf("keys: PEM block %q is not a private key", b.Type)
		}
		if _, ok := b.Headers["DEK-Info"]; ok {
			return nil, errors.New("keys: the PEM key is encrypted; decrypt it first (e.g. openssl pkey -in key.pem -out plain.pem)")
		}
		if found != nil {
			return nil, errors.New("keys: the PEM data holds more than one private key")
		}
		found = b
	}
	if found == nil {
		return nil, errors.New("keys: no PEM private key or JWK found")
	}
	var key any
	var err error
	switch found.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(found.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(found.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(found.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("keys: parsing PEM %q: %w", found.Type, err)
	}
	priv, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("keys: unsupported private key type %T", key)
	}
	return priv, nil
}

// normalizePrivate returns priv rebuilt from its private scalar or seed, so
// that its public half is derived rather than trusted from the input, and
// RSA keys carry their precomputed values.
func normalizePrivate(priv crypto.Signer) (crypto.Signer, error) {
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return k, nil // checkFits reports the curve
		}
		raw, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("keys: invalid EC private key: %w", err)
		}
		n, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
		if err != nil {
			return nil, fmt.Errorf("keys: invalid EC private key: %w", err)
		}
		if !n.PublicKey.Equal(&k.PublicKey) {
			return nil, errors.New("keys: EC private key does not match its public key")
		}
		return n, nil
	case *rsa.PrivateKey:
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("keys: invalid RSA private key: %w", err)
		}
		k.Precompute()
		return k, nil
	case ed25519.PrivateKey:
		if len(k) != ed25519.PrivateKeySize {
			return nil, errors.New("keys: invalid Ed25519 private key length")
		}
		n := ed25519.NewKeyFromSeed(k.Seed())
		if !n.Public().(ed25519.PublicKey).Equal(k.Public()) {
			return nil, errors.New("keys: Ed25519 private key does not match its public key")
		}
		return n, nil
	case *ed25519.PrivateKey:
		return normalizePrivate(*k)
	}
	return nil, fmt.Errorf("keys: unsupported private key type %T", priv)
}

// Import adds priv as a key for alg. By default it becomes the next key,
// published now and signing after the next rotation; a previous next key
// is dropped (it never signed, so no token needs it). With activate it
// signs at once and the active key is retired; verifiers holding a cached
// JWKS will not know it until they refresh, which is why that is opt-in.
// When alg has no active key, which is the case in a store that holds no
// key set yet (migrating an issuer before tsidp's first start), it becomes
// the active key with or without activate: Administrator.Import imports
// first and then adds the other keys the policy asks for. A key already in
// the set, or revoked and still remembered, is refused.
func (s *Set) Import(now time.Time, p Policy, priv crypto.Signer, alg Algorithm, activate bool) (*Key, error) {
	now = now.UTC()
	if !p.enabled(alg) {
		return nil, fmt.Errorf("keys: cannot import a %s key: %s is not one of the configured algorithms %v", alg, alg, p.Algorithms)
	}
	priv, err := normalizePrivate(priv)
	if err != nil {
		return nil, err
	}
	if err := checkStrength(priv); err != nil {
		return nil, err
	}
	k, err := newKey(now, p, alg, priv)
	if err != nil {
		return nil, err
	}
	if err := roundTrip(k); err != nil {
		return nil, err
	}
	if old := s.Key(k.ID); old != nil {
		if old.State == StateRevoked {
			return nil, fmt.Errorf("keys: key %s was revoked at %s; refusing to import it again", k.ID, old.Revoked.Format(time.RFC3339))
		}
		return nil, fmt.Errorf("keys: key %s is already in the set (%s)", k.ID, old.State)
	}
	err = s.edit(func(c *Set) error {
		act := c.Active(alg)
		if activate || act == nil {
			if act != nil {
				act.retire(now, p)
			}
			k.activate(now)
		} else if n := c.Next(alg); n != nil {
			c.remove(n)
		}
		c.Keys = append(c.Keys, k)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// ImportPrivateKey parses pemOrJWK with ParsePrivateKey and adds it with
// Import.
func (s *Set) ImportPrivateKey(now time.Time, p Policy, pemOrJWK []byte, alg Algorithm, activate bool) (*Key, error) {
	priv, err := ParsePrivateKey(pemOrJWK, alg)
	if err != nil {
		return nil, err
	}
	return s.Import(now, p, priv, alg, activate)
}

// checkStrength refuses private keys with parameters no key generator
// produces and an attacker could guess or exploit: an RSA public exponent
// other than 65537 (small ones such as 3 break under common implementation
// faults), an EC scalar within 2^128 of 0 or of the group order (d = 1 is
// a valid key that anyone can compute), an all-zero Ed25519 seed. It
// applies to imported keys only: a key already in a stored set is never
// refused by a later, stricter rule, which would lock its owner out.
func checkStrength(priv crypto.Signer) error {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if k.E != 65537 {
			return fmt.Errorf("keys: weak RSA key: public exponent %d, want 65537 (small exponents such as 3 are refused)", k.E)
		}
	case *ecdsa.PrivateKey:
		d, err := k.Bytes()
		if err != nil {
			return fmt.Errorf("keys: invalid EC private key: %w", err)
		}
		n := k.Curve.Params().N
		x := new(big.Int).SetBytes(d)
		if x.BitLen() <= 128 || new(big.Int).Sub(n, x).BitLen() <= 128 {
			return errors.New("keys: weak EC key: the private scalar is within 2^128 of 0 or of the group order (such as d = 1), where anyone can find it; generate a new key")
		}
	case ed25519.PrivateKey:
		if isZero(k.Seed()) {
			return errors.New("keys: weak Ed25519 key: its seed is all zeros; generate a new key")
		}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// roundTrip checks that k survives the key-set codec, so that importing
// it cannot leave the store holding a set that no tsidp can load again.
func roundTrip(k *Key) error {
	doc, err := encodeKey(k, nil)
	if err != nil {
		return fmt.Errorf("keys: the %s key cannot be stored: %s", k.Algorithm, unprefixed(err))
	}
	defer clear(doc.Private)
	back, err := decodeKey(doc, nil)
	if err != nil {
		return fmt.Errorf("keys: the %s key cannot be stored: it would not load back (%v)", k.Algorithm, err)
	}
	if !publicEqual(back.Public, k.Public) || back.Private == nil || !publicEqual(back.Private.Public(), k.Public) {
		return fmt.Errorf("keys: the %s key cannot be stored: it loads back as a different key", k.Algorithm)
	}
	return nil
}
