package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
)

// publicJWK holds the public members of a JWK (RFC 7517/7518/8037), already
// in their wire byte form. It has no place for private members, so nothing
// rendered from it can leak one.
type publicJWK struct {
	kty  string // "EC", "RSA" or "OKP"
	crv  string // EC and OKP
	x, y []byte // EC (x, y) and OKP (x)
	n, e []byte // RSA
}

// publicJWKOf returns the public JWK members of pub.
func publicJWKOf(pub crypto.PublicKey) (publicJWK, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		pt, err := k.Bytes() // 0x04 || X || Y, coordinates padded to full size
		if err != nil {
			return publicJWK{}, fmt.Errorf("keys: invalid EC public key: %w", err)
		}
		size := (len(pt) - 1) / 2
		return publicJWK{kty: "EC", crv: k.Curve.Params().Name, x: pt[1 : 1+size], y: pt[1+size:]}, nil
	case *rsa.PublicKey:
		return publicJWK{kty: "RSA", n: k.N.Bytes(), e: big.NewInt(int64(k.E)).Bytes()}, nil
	case ed25519.PublicKey:
		return publicJWK{kty: "OKP", crv: "Ed25519", x: []byte(k)}, nil
	}
	return publicJWK{}, fmt.Errorf("keys: unsupported public key type %T", pub)
}

var b64 = base64.RawURLEncoding

// appendJSON appends j as a JWK object with the given kid and alg and
// "use":"sig", members in a fixed order so equal keys render equal bytes.
func (j publicJWK) appendJSON(b []byte, kid string, alg Algorithm) []byte {
	b = append(b, `{"kty":"`...)
	b = append(b, j.kty...)
	b = append(b, `","use":"sig","alg":"`...)
	b = append(b, alg...)
	b = append(b, `","kid":"`...)
	b = append(b, kid...) // a base64url thumbprint: nothing to escape
	b = append(b, '"')
	switch j.kty {
	case "EC", "OKP":
		b = appendMember(b, "crv", []byte(j.crv), false)
		b = appendMember(b, "x", j.x, true)
		if j.kty == "EC" {
			b = appendMember(b, "y", j.y, true)
		}
	case "RSA":
		b = appendMember(b, "n", j.n, true)
		b = appendMember(b, "e", j.e, true)
	}
	return append(b, '}')
}

// appendMember appends ,"name":"value", base64url-encoding value if enc.
// Values are curve names or base64url, which need no JSON escaping.
func appendMember(b []byte, name string, value []byte, enc bool) []byte {
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":"`...)
	if enc {
		b = b64.AppendEncode(b, value)
	} else {
		b = append(b, value...)
	}
	return append(b, '"')
}

// IsKID reports whether s has the form of a kid: an RFC 7638 SHA-256
// thumbprint in unpadded base64url, 43 characters. About one kid in 64
// starts with "-".
func IsKID(s string) bool {
	if len(s) != b64.EncodedLen(sha256.Size) {
		return false
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// thumbprint returns the RFC 7638 JWK thumbprint of pub: the base64url
// SHA-256 of the required public members, in lexicographic order, with no
// whitespace. It is the key's kid.
func thumbprint(pub crypto.PublicKey) (string, error) {
	j, err := publicJWKOf(pub)
	if err != nil {
		return "", err
	}
	var b []byte
	switch j.kty {
	case "EC":
		b = append(b, `{"crv":"`...)
		b = append(b, j.crv...)
		b = append(b, `","kty":"EC","x":"`...)
		b = b64.AppendEncode(b, j.x)
		b = append(b, `","y":"`...)
		b = b64.AppendEncode(b, j.y)
		b = append(b, `"}`...)
	case "RSA":
		b = append(b, `{"e":"`...)
		b = b64.AppendEncode(b, j.e)
		b = append(b, `","kty":"RSA","n":"`...)
		b = b64.AppendEncode(b, j.n)
		b = append(b, `"}`...)
	case "OKP":
		b = append(b, `{"crv":"`...)
		b = append(b, j.crv...)
		b = append(b, `","kty":"OKP","x":"`...)
		b = b64.AppendEncode(b, j.x)
		b = append(b, `"}`...)
	}
	sum := sha256.Sum256(b)
	return b64.EncodeToString(sum[:]), nil
}
