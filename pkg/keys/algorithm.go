package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
)

// Algorithm is a JWS signing algorithm, spelled as in RFC 7518 / RFC 8037.
type Algorithm string

const (
	// RS256 is RSASSA-PKCS1-v1_5 with SHA-256. Every JWT library accepts it.
	RS256 Algorithm = "RS256"
	// ES256 is ECDSA on P-256 with SHA-256.
	ES256 Algorithm = "ES256"
	// EdDSA is Ed25519 (RFC 8037). Some verifier libraries lack it.
	EdDSA Algorithm = "EdDSA"
)

// numAlgorithms is the number of supported algorithms; Algorithm.index
// returns values below it.
const numAlgorithms = 3

// Algorithms returns the supported algorithms in their canonical order.
func Algorithms() []Algorithm { return []Algorithm{ES256, RS256, EdDSA} }

// ParseAlgorithm returns the Algorithm named s. Names are case-sensitive,
// as in JWS headers: "ES256", "RS256", "EdDSA".
func ParseAlgorithm(s string) (Algorithm, error) {
	a := Algorithm(s)
	if a.index() < 0 {
		return "", fmt.Errorf("keys: unknown algorithm %q (want one of ES256, RS256, EdDSA; names are case-sensitive)", s)
	}
	return a, nil
}

// String returns the algorithm name.
func (a Algorithm) String() string { return string(a) }

// Valid reports whether a is a supported algorithm.
func (a Algorithm) Valid() bool { return a.index() >= 0 }

// index is a's position in the canonical order, or -1 if a is unknown. It
// indexes fixed-size arrays on the signing path, where a map would cost a
// hash per token.
func (a Algorithm) index() int {
	switch a {
	case ES256:
		return 0
	case RS256:
		return 1
	case EdDSA:
		return 2
	}
	return -1
}

// Supported RSA modulus sizes.
const minRSABits = 2048

// maxRSABits bounds RSA keys. go-jose, which decodes the stored key set
// and many verifiers' JWKS, refuses moduli above 4096 bits
// (jose.MaxRSAModulusBits): one such key would make the store unreadable
// and the published JWKS unparsable for the whole set. A variable only so
// that a test can show the import's codec round trip catching what the
// codec refuses.
var maxRSABits = 4096

// generateKey creates a new private key for alg. It is a variable so tests
// can hand out pre-generated RSA keys: generating them is slow.
var generateKey = func(alg Algorithm, rsaBits int) (crypto.Signer, error) {
	switch alg {
	case ES256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RS256:
		return rsa.GenerateKey(rand.Reader, rsaBits)
	case EdDSA:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("keys: unknown algorithm %q", alg)
}

// checkFits reports whether pub is a key alg can use.
func checkFits(alg Algorithm, pub crypto.PublicKey) error {
	switch alg {
	case ES256:
		if k, ok := pub.(*ecdsa.PublicKey); ok && k.Curve == elliptic.P256() {
			return nil
		}
		return fmt.Errorf("keys: ES256 needs a P-256 EC key, got %s", describeKey(pub))
	case RS256:
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("keys: RS256 needs an RSA key, got %s", describeKey(pub))
		}
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("keys: RS256 needs an RSA key of %d to %d bits, got %d bits", minRSABits, maxRSABits, n)
		}
		return nil
	case EdDSA:
		if k, ok := pub.(ed25519.PublicKey); ok && len(k) == ed25519.PublicKeySize {
			return nil
		}
		return fmt.Errorf("keys: EdDSA needs an Ed25519 key, got %s", describeKey(pub))
	}
	return fmt.Errorf("keys: unknown algorithm %q", alg)
}

// describeKey names the type and size of a public key, for messages and
// listings. It never looks at private material.
func describeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "EC " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	case nil:
		return "no key"
	}
	return fmt.Sprintf("unsupported key type %T", pub)
}
