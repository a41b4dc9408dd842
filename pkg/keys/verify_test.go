package keys

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestVerify: Verify accepts exactly the tokens a published key of this
// issuer signed, with that key's algorithm, and reports the typ.
func TestVerify(t *testing.T) {
	p := testPolicy(ES256, RS256, EdDSA)
	tm := newTestManager(t, p)
	other := newTestManager(t, p)
	for _, alg := range p.Algorithms {
		for _, typ := range []Type{TypeJWT, TypeAccessToken} {
			tok, kid, err := tm.SignAs(nil, alg, typ, testPayload)
			if err != nil {
				t.Fatal(err)
			}
			v, err := tm.Verify(string(tok))
			if err != nil || v.Algorithm != alg || v.KID != kid || v.Type != typ.String() || string(v.Payload) != string(testPayload) {
				t.Fatalf("%s %s: Verify = %+v, %v", alg, typ, v, err)
			}
			// Another issuer's token, an altered one and garbage are not ours.
			foreign, _, _ := other.SignAs(nil, alg, typ, testPayload)
			altered := []byte(string(tok))
			altered[len(altered)-5] ^= 1
			for name, bad := range map[string]string{
				"foreign": string(foreign), "altered": string(altered), "garbage": "a.b.c", "none": "eyJhbGciOiJub25lIn0.e30.",
				"oversized": strings.Repeat("a", 20<<10) + ".b.c",
			} {
				if _, err := tm.Verify(bad); !errors.Is(err, ErrNotOurs) {
					t.Errorf("%s %s %s token: Verify = %v, want ErrNotOurs", alg, typ, name, err)
				}
			}
		}
	}
}

// TestVerifyFollowsTheKeySet: a retired key still verifies (its tokens are
// still valid), a revoked one no longer does.
func TestVerifyFollowsTheKeySet(t *testing.T) {
	p := testPolicy(ES256)
	tm := newTestManager(t, p)
	tok, kid, err := tm.Sign(nil, ES256, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	tm.clk.Advance(p.JWKSMaxAge + p.ClockSkew + time.Second)
	if _, err := tm.Rotate(testCtx(t), nil, false); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.Verify(string(tok)); err != nil {
		t.Errorf("token of the retired key: %v", err)
	}
	if _, err := tm.Revoke(testCtx(t), kid); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.Verify(string(tok)); !errors.Is(err, ErrNotOurs) {
		t.Errorf("token of a revoked key: %v, want ErrNotOurs", err)
	}
}
