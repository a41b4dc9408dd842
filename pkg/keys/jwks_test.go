package keys

import (
	"crypto"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// The example of RFC 7638 §3.1.
func TestThumbprintRFC7638(t *testing.T) {
	n, err := base64.RawURLEncoding.DecodeString("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
	if err != nil {
		t.Fatal(err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537}
	got, err := thumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	if want := "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Errorf("thumbprint = %s; want %s", got, want)
	}
}

// TestIsKID: every kid has the form IsKID accepts, one starting with "-"
// included; flags and other words do not.
func TestIsKID(t *testing.T) {
	for _, k := range ensured(t, testPolicy()).Keys {
		if !IsKID(k.ID) {
			t.Errorf("IsKID(%q) = false for a %s key's kid", k.ID, k.Algorithm)
		}
	}
	for s, want := range map[string]bool{
		"NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs": true,
		"-zbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs": true,
		"--bLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs": true,
		"--state-dir": false,
		"-NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs": false, // 44 characters
		"NzbLsXh8uDCcd+6MNwXF4W/7noWXFZAfHkxZsRGC9Xs":  false, // standard base64
		"--config=/etc/tsidp/abcdefghijklmnopqrstuv":   false,
		"": false,
	} {
		if got := IsKID(s); got != want {
			t.Errorf("IsKID(%q) = %v, want %v", s, got, want)
		}
	}
}

// Our thumbprint must match go-jose's for every algorithm: verifiers
// compute kids with libraries like it.
func TestThumbprintMatchesGoJose(t *testing.T) {
	s := ensured(t, testPolicy())
	for _, k := range s.Keys {
		tp, err := (&jose.JSONWebKey{Key: k.Public}).Thumbprint(crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if want := base64.RawURLEncoding.EncodeToString(tp); k.ID != want {
			t.Errorf("%s kid %s; go-jose thumbprint %s", k.Algorithm, k.ID, want)
		}
	}
}

// privateMembers are the JWK members that carry private material (RFC
// 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

func TestRenderJWKSPublicOnly(t *testing.T) {
	p := testPolicy()
	s := ensured(t, p)
	for _, alg := range p.Algorithms {
		if err := s.Rotate(t0.Add(2*time.Hour), p, alg, false); err != nil {
			t.Fatal(err)
		}
	}
	// A revoked key must not appear.
	revoked := s.Next(EdDSA).ID
	if err := s.Revoke(t0.Add(3*time.Hour), p, revoked); err != nil {
		t.Fatal(err)
	}
	body, etag := RenderJWKS(s)
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("JWKS is not JSON: %v\n%s", err, body)
	}
	allowed := map[string][]string{
		"EC":  {"kty", "use", "alg", "kid", "crv", "x", "y"},
		"RSA": {"kty", "use", "alg", "kid", "n", "e"},
		"OKP": {"kty", "use", "alg", "kid", "crv", "x"},
	}
	seen := map[string]int{}
	for _, k := range doc.Keys {
		kty, _ := k["kty"].(string)
		want, ok := allowed[kty]
		if !ok {
			t.Fatalf("unexpected kty %q", kty)
		}
		var names []string
		for name := range k {
			names = append(names, name)
		}
		slices.Sort(names)
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("%s key members %v; want exactly %v", kty, names, want)
		}
		for _, m := range privateMembers {
			if _, ok := k[m]; ok {
				t.Errorf("%s key has private member %q", kty, m)
			}
		}
		if k["use"] != "sig" {
			t.Errorf("use = %v", k["use"])
		}
		seen[k["alg"].(string)]++
		if k["kid"] == revoked {
			t.Error("revoked key is in the JWKS")
		}
	}
	// Per algorithm: active, next, retired (the revoked EdDSA next key
	// was replaced by a new one).
	for _, alg := range p.Algorithms {
		if seen[string(alg)] != 3 {
			t.Errorf("%d %s keys in the JWKS; want 3", seen[string(alg)], alg)
		}
	}
	for _, m := range privateMembers {
		if strings.Contains(string(body), `"`+m+`":`) {
			t.Errorf("JWKS body contains %q", m)
		}
	}
	// go-jose reads every key as a valid public key with the right kid.
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	for _, jk := range set.Keys {
		if !jk.Valid() || !jk.IsPublic() {
			t.Errorf("go-jose: key %s valid=%v public=%v", jk.KeyID, jk.Valid(), jk.IsPublic())
		}
		if k := s.Key(jk.KeyID); k == nil || !publicEqual(k.Public, jk.Key) || jk.Algorithm != string(k.Algorithm) {
			t.Errorf("go-jose: key %s does not match the set", jk.KeyID)
		}
	}
	if len(etag) < 3 || etag[0] != '"' || etag[len(etag)-1] != '"' || strings.HasPrefix(etag, `W/`) {
		t.Errorf("ETag %s is not a quoted strong validator", etag)
	}
}

func TestRenderJWKSDeterministic(t *testing.T) {
	p := testPolicy()
	s := ensured(t, p)
	s.Rotate(t0.Add(2*time.Hour), p, ES256, false)
	body1, etag1 := RenderJWKS(s)
	// Same set, keys in another order: same bytes.
	c := s.Clone()
	slices.Reverse(c.Keys)
	body2, etag2 := RenderJWKS(c)
	if string(body1) != string(body2) || etag1 != etag2 {
		t.Errorf("JWKS depends on key order:\n%s\n%s", body1, body2)
	}
	// Active keys first.
	var doc struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	json.Unmarshal(body1, &doc)
	for i, alg := range []Algorithm{ES256, RS256, EdDSA} {
		if doc.Keys[i].Kid != s.Active(alg).ID {
			t.Errorf("JWKS key #%d is %s; want the active %s key", i, doc.Keys[i].Kid, alg)
		}
	}
	// A change changes the ETag.
	s.Revoke(t0.Add(3*time.Hour), p, s.Next(RS256).ID)
	if _, etag3 := RenderJWKS(s); etag3 == etag1 {
		t.Error("ETag unchanged after the set changed")
	}
	// Empty set: a valid, empty JWKS.
	if body, _ := RenderJWKS(&Set{}); string(body) != `{"keys":[]}` {
		t.Errorf("empty JWKS = %s", body)
	}
}
