package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t *testing.T, k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("PRIVATE KEY", der)
}

func jwkOf(t *testing.T, k any, alg string) []byte {
	b, err := jose.JSONWebKey{Key: k, Algorithm: alg}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePrivateKey(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rk := testRSAKey()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	sec1, _ := x509.MarshalECPrivateKey(ec)
	withParams := append(pemOf("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}), pemOf("EC PRIVATE KEY", sec1)...)
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00"}, Bytes: []byte{1}})

	tests := []struct {
		name    string
		in      []byte
		alg     Algorithm
		want    crypto.PublicKey // nil: error expected
		wantErr string
	}{
		{"ES256 PKCS#8", pkcs8(t, ec), ES256, ec.Public(), ""},
		{"ES256 SEC1", pemOf("EC PRIVATE KEY", sec1), ES256, ec.Public(), ""},
		{"ES256 SEC1 after EC PARAMETERS", withParams, ES256, ec.Public(), ""},
		{"ES256 JWK", jwkOf(t, ec, "ES256"), ES256, ec.Public(), ""},
		{"RS256 PKCS#8", pkcs8(t, rk), RS256, rk.Public(), ""},
		{"RS256 PKCS#1", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk)), RS256, rk.Public(), ""},
		{"RS256 JWK", jwkOf(t, rk, ""), RS256, rk.Public(), ""},
		{"EdDSA PKCS#8", pkcs8(t, ed), EdDSA, ed.Public(), ""},
		{"EdDSA JWK with whitespace", append([]byte("\n  "), jwkOf(t, ed, "EdDSA")...), EdDSA, ed.Public(), ""},

		{"RSA 1024", pkcs8(t, small), RS256, nil, "keys: RS256 needs an RSA key of 2048 to 4096 bits, got 1024 bits"},
		{"P-384 for ES256", pkcs8(t, ec384), ES256, nil, "keys: ES256 needs a P-256 EC key, got EC P-384"},
		{"Ed25519 for ES256", pkcs8(t, ed), ES256, nil, "keys: ES256 needs a P-256 EC key, got Ed25519"},
		{"EC for RS256", pkcs8(t, ec), RS256, nil, "keys: RS256 needs an RSA key, got EC P-256"},
		{"RSA for EdDSA", pkcs8(t, rk), EdDSA, nil, "keys: EdDSA needs an Ed25519 key, got RSA-2048"},
		{"public JWK", jwkOf(t, ec.Public(), ""), ES256, nil, "keys: the JWK holds a public key"},
		{"JWK for another alg", jwkOf(t, ec, "ES384"), ES256, nil, `keys: the JWK is for alg "ES384"`},
		{"encrypted PEM", encrypted, RS256, nil, "keys: the PEM key is encrypted"},
		{"encrypted PKCS#8", pemOf("ENCRYPTED PRIVATE KEY", []byte{1}), RS256, nil, "keys: the PEM key is encrypted"},
		{"certificate", pemOf("CERTIFICATE", []byte{1}), RS256, nil, `keys: PEM block "CERTIFICATE" is not a private key`},
		{"two keys", append(pkcs8(t, ec), pkcs8(t, ec)...), ES256, nil, "keys: the PEM data holds more than one private key"},
		{"garbage", []byte("hello"), ES256, nil, "keys: no PEM private key or JWK found"},
		{"bad DER", pemOf("PRIVATE KEY", []byte{1, 2, 3}), ES256, nil, `keys: parsing PEM "PRIVATE KEY"`},
		{"unknown alg", pkcs8(t, ec), "ES512", nil, `keys: unknown algorithm "ES512"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			priv, err := ParsePrivateKey(tt.in, tt.alg)
			if tt.want == nil {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePrivateKey = %v; want an error starting %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !publicEqual(priv.Public(), tt.want) {
				t.Error("parsed key has another public key")
			}
		})
	}
}

func TestImport(t *testing.T) {
	p := testPolicy(ES256)
	newEC := func() []byte {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		return pkcs8(t, k)
	}
	now := t0.Add(time.Hour)

	t.Run("as next", func(t *testing.T) {
		s := ensured(t, p)
		act, oldNext := s.Active(ES256), s.Next(ES256)
		k, err := s.ImportPrivateKey(now, p, newEC(), ES256, false)
		if err != nil {
			t.Fatal(err)
		}
		checkEnsured(t, s, p)
		if s.Next(ES256) != k || k.State != StateNext || !k.Published.Equal(now) || !k.SignsFrom.Equal(now.Add(p.JWKSMaxAge+p.ClockSkew)) {
			t.Errorf("imported key = %+v; want the next key, published now", k)
		}
		if s.Active(ES256).ID != act.ID {
			t.Error("import as next changed the active key")
		}
		if s.Key(oldNext.ID) != nil {
			t.Error("the replaced next key (which never signed) is still in the set")
		}
		// It obeys the publication lead like any next key.
		if err := s.Rotate(now.Add(time.Minute), p, ES256, false); err == nil {
			t.Error("an imported next key could sign before its publication lead")
		}
	})
	t.Run("activate", func(t *testing.T) {
		s := ensured(t, p)
		act, next := s.Active(ES256), s.Next(ES256)
		k, err := s.ImportPrivateKey(now, p, newEC(), ES256, true)
		if err != nil {
			t.Fatal(err)
		}
		checkEnsured(t, s, p)
		if s.Active(ES256) != k || !k.Activated.Equal(now) {
			t.Error("imported key is not active")
		}
		if r := s.Key(act.ID); r.State != StateRetired || !r.Retired.Equal(now) {
			t.Error("the previous active key was not retired")
		}
		if s.Next(ES256).ID != next.ID {
			t.Error("import with activate changed the next key")
		}
	})
	t.Run("into empty set", func(t *testing.T) {
		s := &Set{}
		k, err := s.ImportPrivateKey(now, p, newEC(), ES256, false)
		if err != nil {
			t.Fatal(err)
		}
		if k.State != StateActive {
			t.Errorf("first key of an algorithm imported as %s; want active", k.State)
		}
		if err := s.Ensure(now, p); err != nil {
			t.Fatal(err)
		}
		checkEnsured(t, s, p)
	})
	t.Run("duplicate", func(t *testing.T) {
		s := ensured(t, p)
		in := newEC()
		if _, err := s.ImportPrivateKey(now, p, in, ES256, false); err != nil {
			t.Fatal(err)
		}
		before := s.Clone()
		if _, err := s.ImportPrivateKey(now, p, in, ES256, true); err == nil || !strings.Contains(err.Error(), "already in the set") {
			t.Errorf("re-import = %v", err)
		}
		if !s.sameAs(before) {
			t.Error("failed import changed the set")
		}
	})
	t.Run("revoked", func(t *testing.T) {
		s := ensured(t, p)
		in := newEC()
		k, err := s.ImportPrivateKey(now, p, in, ES256, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Revoke(now, p, k.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ImportPrivateKey(now, p, in, ES256, false); err == nil || !strings.Contains(err.Error(), "was revoked") {
			t.Errorf("importing a revoked key = %v; want refusal", err)
		}
	})
	t.Run("algorithm not configured", func(t *testing.T) {
		s := ensured(t, p)
		_, ed, _ := ed25519.GenerateKey(rand.Reader)
		if _, err := s.ImportPrivateKey(now, p, pkcs8(t, ed), EdDSA, false); err == nil {
			t.Error("imported a key for an algorithm that is not configured")
		}
	})
}

// TestImportRefusesWhatCannotBeStoredOrIsWeak: every refusal leaves the
// set as it was, and says why in one line.
func TestImportRefusesWhatCannotBeStoredOrIsWeak(t *testing.T) {
	p := testPolicy(ES256, RS256, EdDSA)
	now := t0.Add(time.Hour)

	big4104, err := rsa.GenerateKey(rand.Reader, 4104)
	if err != nil {
		t.Fatal(err)
	}
	// e = 3: a valid RSA key that no sane generator makes.
	e3 := rsaWithExponent(t, 3)
	one := ecScalar(t, big.NewInt(1))
	nMinus1 := ecScalar(t, new(big.Int).Sub(elliptic.P256().Params().N, big.NewInt(1)))
	zeroSeed := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

	tests := []struct {
		name    string
		key     crypto.Signer
		alg     Algorithm
		wantErr string
	}{
		{"RSA 4104 bits", big4104, RS256, "keys: RS256 needs an RSA key of 2048 to 4096 bits, got 4104 bits"},
		{"RSA e=3", e3, RS256, "keys: weak RSA key: public exponent 3, want 65537"},
		{"EC d=1", one, ES256, "keys: weak EC key: the private scalar is within 2^128 of 0 or of the group order"},
		{"EC d=n-1", nMinus1, ES256, "keys: weak EC key"},
		{"Ed25519 zero seed", zeroSeed, EdDSA, "keys: weak Ed25519 key: its seed is all zeros"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, in := range [][]byte{pkcs8(t, tt.key), jwkOf(t, tt.key, "")} {
				s := ensured(t, p)
				before := s.Clone()
				_, err := s.ImportPrivateKey(now, p, in, tt.alg, true)
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("import = %v; want one line starting %q", err, tt.wantErr)
				}
				if !s.sameAs(before) {
					t.Error("a refused import changed the set")
				}
			}
		})
	}
}

// TestImportRoundTripsThroughTheCodec: a key the store's codec cannot load
// back is refused at import, before anything is written, even if the
// algorithm's own checks let it through.
func TestImportRoundTripsThroughTheCodec(t *testing.T) {
	old := maxRSABits
	maxRSABits = 8192 // as it once was: go-jose still refuses > 4096
	defer func() { maxRSABits = old }()
	k, err := rsa.GenerateKey(rand.Reader, 4104)
	if err != nil {
		t.Fatal(err)
	}
	p := testPolicy(RS256)
	s := ensured(t, p)
	_, err = s.Import(t0.Add(time.Hour), p, k, RS256, false)
	if err == nil || !strings.HasPrefix(err.Error(), "keys: the RS256 key cannot be stored: it would not load back") {
		t.Fatalf("Import(4104-bit RSA) = %v; want a refusal naming the codec", err)
	}
	if _, err := UnmarshalSet(mustMarshal(t, s)); err != nil {
		t.Errorf("the set no longer loads after the refused import: %v", err)
	}
}

func mustMarshal(t *testing.T, s *Set) []byte {
	t.Helper()
	b, err := MarshalSet(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rsaWithExponent builds a valid 2048-bit RSA key with public exponent e.
func rsaWithExponent(t *testing.T, e int) *rsa.PrivateKey {
	t.Helper()
	E := big.NewInt(int64(e))
	one := big.NewInt(1)
	for {
		p, err := rand.Prime(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		q, err := rand.Prime(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
		d := new(big.Int).ModInverse(E, phi)
		n := new(big.Int).Mul(p, q)
		if d == nil || p.Cmp(q) == 0 || n.BitLen() != 2048 {
			continue
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: e}, D: d, Primes: []*big.Int{p, q}}
		if err := k.Validate(); err != nil {
			t.Fatal(err)
		}
		k.Precompute()
		return k
	}
}

// ecScalar builds the P-256 key with private scalar d.
func ecScalar(t *testing.T, d *big.Int) *ecdsa.PrivateKey {
	t.Helper()
	raw := d.FillBytes(make([]byte, 32))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
