package keys

import (
	"crypto/sha256"
	"slices"
)

// RenderJWKS returns the JWKS document for set and its ETag. It lists the
// next, active and retired keys, each with only its public members plus
// "kty", "use":"sig", "alg" and "kid". Keys are ordered active first, then
// next, then retired (by algorithm, newest first), so an unchanged set
// renders identical bytes and verifiers that ignore kid try the signing key
// first. The ETag is a quoted, strong hash of the body.
//
// A key whose public key cannot be encoded is left out; Set.Check refuses
// such sets, so a set that passed it renders every published key.
func RenderJWKS(set *Set) (body []byte, etag string) {
	ks := make([]*Key, 0, len(set.Keys))
	for _, k := range set.Keys {
		if k.State.Published() {
			ks = append(ks, k)
		}
	}
	slices.SortFunc(ks, compareForJWKS)
	body = append(body, `{"keys":[`...)
	first := true
	for _, k := range ks {
		j, err := publicJWKOf(k.Public)
		if err != nil {
			continue
		}
		if !first {
			body = append(body, ',')
		}
		first = false
		body = j.appendJSON(body, k.ID, k.Algorithm)
	}
	body = append(body, "]}"...)
	return body, etagOf(body)
}

// etagOf returns a strong ETag for body: the quoted base64url SHA-256.
func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	b := make([]byte, 0, 2+b64.EncodedLen(len(sum)))
	b = append(b, '"')
	b = b64.AppendEncode(b, sum[:])
	b = append(b, '"')
	return string(b)
}
