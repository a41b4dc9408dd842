package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// signer signs compact JWS with one active key. It is immutable once built,
// so any number of goroutines may use it.
type signer struct {
	alg Algorithm
	kid string
	// prefixes are base64url({"alg":…,"kid":…,"typ":…}) followed by '.',
	// one per token type, computed once per key rather than once per
	// token.
	prefixes [numTypes][]byte
	sigLen   int // raw signature length

	ec  *ecdsa.PrivateKey
	rsa *rsa.PrivateKey
	ed  ed25519.PrivateKey
}

// Type is a token's JWS "typ" header.
type Type int

const (
	// TypeJWT is "typ": "JWT", for ID tokens and POST /token's tokens.
	TypeJWT Type = iota
	// TypeAccessToken is "typ": "at+jwt", the RFC 9068 access token
	// profile: resource servers that check it cannot be handed an ID
	// token as an access token.
	TypeAccessToken
	numTypes
)

// String returns the header value.
func (t Type) String() string {
	if t == TypeAccessToken {
		return "at+jwt"
	}
	return "JWT"
}

func newSigner(k *Key) (*signer, error) {
	s := &signer{alg: k.Algorithm, kid: k.ID}
	for t := range numTypes {
		hdr, err := json.Marshal(struct {
			Alg Algorithm `json:"alg"`
			Kid string    `json:"kid"`
			Typ string    `json:"typ"`
		}{k.Algorithm, k.ID, t.String()})
		if err != nil {
			return nil, err
		}
		s.prefixes[t] = append(b64.AppendEncode(nil, hdr), '.')
	}
	switch priv := k.Private.(type) {
	case *ecdsa.PrivateKey:
		s.ec, s.sigLen = priv, 64
	case *rsa.PrivateKey:
		// Already precomputed: by GenerateKey or normalizePrivate.
		s.rsa, s.sigLen = priv, priv.Size()
	case ed25519.PrivateKey:
		s.ed, s.sigLen = priv, ed25519.SignatureSize
	default:
		return nil, fmt.Errorf("keys: key %s: unsupported private key type %T", k.ID, k.Private)
	}
	if err := checkFits(k.Algorithm, k.Private.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// appendJWS appends the compact JWS header.payload.signature to dst.
func (s *signer) appendJWS(dst []byte, typ Type, payload []byte) ([]byte, error) {
	prefix := s.prefixes[typ]
	start := len(dst)
	dst = slices.Grow(dst, len(prefix)+b64.EncodedLen(len(payload))+1+b64.EncodedLen(s.sigLen))
	dst = append(dst, prefix...)
	dst = b64.AppendEncode(dst, payload)
	input := dst[start:] // the JWS signing input: header.payload
	var (
		sig []byte
		raw [64]byte
		err error
	)
	switch {
	case s.ec != nil:
		sum := sha256.Sum256(input)
		var der []byte
		if der, err = ecdsa.SignASN1(rand.Reader, s.ec, sum[:]); err == nil {
			err = p1363FromASN1(raw[:], der)
			sig = raw[:]
		}
	case s.ed != nil:
		sig = ed25519.Sign(s.ed, input)
	case s.rsa != nil:
		sum := sha256.Sum256(input)
		sig, err = rsa.SignPKCS1v15(nil, s.rsa, crypto.SHA256, sum[:])
	}
	if err != nil {
		return dst[:start], fmt.Errorf("keys: signing with %s key %s: %w", s.alg, s.kid, err)
	}
	dst = append(dst, '.')
	return b64.AppendEncode(dst, sig), nil
}

var errBadECDSASig = errors.New("malformed ECDSA signature")

// p1363FromASN1 converts a DER ECDSA-Sig-Value for P-256 into the fixed
// 32-byte r || 32-byte s form JWS requires (RFC 7518 §3.4). It is parsed by
// hand because the input is small and produced by crypto/ecdsa, and this
// avoids the big.Int allocations of ecdsa.Sign.
func p1363FromASN1(out, der []byte) error {
	// SEQUENCE { INTEGER r, INTEGER s }; for P-256 every length fits in
	// one byte (short form).
	if len(der) < 2 || der[0] != 0x30 || int(der[1]) != len(der)-2 || der[1] >= 0x80 {
		return errBadECDSASig
	}
	rest := der[2:]
	for i := range 2 {
		if len(rest) < 2 || rest[0] != 0x02 || rest[1] >= 0x80 || int(rest[1]) > len(rest)-2 {
			return errBadECDSASig
		}
		n := int(rest[1])
		v := rest[2 : 2+n]
		rest = rest[2+n:]
		for len(v) > 0 && v[0] == 0 { // drop the sign-padding zero
			v = v[1:]
		}
		if len(v) > 32 {
			return errBadECDSASig
		}
		half := out[32*i : 32*(i+1)]
		clear(half)
		copy(half[32-len(v):], v)
	}
	if len(rest) != 0 {
		return errBadECDSASig
	}
	return nil
}
