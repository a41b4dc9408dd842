package keys

import (
	"errors"
	"fmt"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// Verified is a token whose signature a published key of this issuer
// checked. Only the signature and key are checked: the claims (iss, aud,
// exp…) are the caller's to check.
type Verified struct {
	// Algorithm and KID name the key that signed it.
	Algorithm Algorithm
	KID       string
	// Type is the "typ" header.
	Type string
	// Payload is the claim set, as signed.
	Payload []byte
}

// ErrNotOurs is wrapped by Verify's error for a token that no published
// key of this issuer signed: malformed, signed by another issuer, by a
// revoked or unknown key, or altered.
var ErrNotOurs = errors.New("not a token of this issuer")

// maxTokenBytes bounds what Verify parses.
const maxTokenBytes = 16 << 10

// Verify checks that token is a compact JWS signed by one of the keys m
// publishes (active, next or retired; never a revoked one), with the
// algorithm that key is for. Tokens tsidp issued come back this way to
// userinfo, logout, introspection and token exchange.
func (m *Manager) Verify(token string) (*Verified, error) {
	if len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
		return nil, fmt.Errorf("keys: %w: not a compact JWS", ErrNotOurs)
	}
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil || len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("keys: %w: malformed", ErrNotOurs)
	}
	h := jws.Signatures[0].Protected
	k := m.cur.Load().set.Key(h.KeyID)
	if k == nil || k.State == StateRevoked || string(k.Algorithm) != h.Algorithm {
		return nil, fmt.Errorf("keys: %w: no published %s key %q", ErrNotOurs, h.Algorithm, h.KeyID)
	}
	payload, err := jws.Verify(k.Public)
	if err != nil {
		return nil, fmt.Errorf("keys: %w: bad signature", ErrNotOurs)
	}
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	return &Verified{Algorithm: k.Algorithm, KID: k.ID, Type: typ, Payload: payload}, nil
}
