package keys

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// logCapture collects a Manager's log lines.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (l *logCapture) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

type testManager struct {
	*Manager
	st  *memStore
	clk *fakeClock
	log *logCapture
}

// newTestManager returns a Manager on a new memStore with a fake clock
// starting at t0.
func newTestManager(t *testing.T, p Policy, opts ...ManagerOption) *testManager {
	t.Helper()
	tm := &testManager{clk: newFakeClock(), log: &logCapture{}}
	tm.st = newMemStore(t)
	opts = append([]ManagerOption{func(m *Manager) { m.now = tm.clk.Now }}, opts...)
	m, err := NewManager(testCtx(t), tm.st, p, tm.log.logf, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tm.Manager = m
	return tm
}

var testPayload = []byte(`{"iss":"https://idp.example.ts.net","sub":"userid:123","aud":"svc","exp":1900000000,"iat":1700000000}`)

// verify checks token against the JWKS body as a verifier would: with
// go-jose, the key chosen by the token's kid.
func verify(token []byte, jwks []byte) (kid string, err error) {
	tok, err := jwt.ParseSigned(string(token), []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		return "", err
	}
	h := tok.Headers[0]
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		return "", err
	}
	ks := set.Key(h.KeyID)
	if len(ks) != 1 {
		return h.KeyID, fmt.Errorf("kid %s: %d keys in the JWKS", h.KeyID, len(ks))
	}
	if ks[0].Algorithm != h.Algorithm {
		return h.KeyID, fmt.Errorf("JWKS key alg %s, token alg %s", ks[0].Algorithm, h.Algorithm)
	}
	var claims map[string]any
	if err := tok.Claims(ks[0], &claims); err != nil {
		return h.KeyID, err
	}
	if claims["sub"] != "userid:123" {
		return h.KeyID, fmt.Errorf("claims = %v", claims)
	}
	return h.KeyID, nil
}

func TestManagerSignVerifies(t *testing.T) {
	tm := newTestManager(t, testPolicy())
	jwks, _ := tm.JWKS()
	for _, alg := range tm.p.Algorithms {
		t.Run(string(alg), func(t *testing.T) {
			dst := []byte("prefix ")
			out, kid, err := tm.Sign(dst, alg, testPayload)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(out, []byte("prefix ")) {
				t.Fatal("Sign did not append to dst")
			}
			token := out[len("prefix "):]
			if kid != tm.cur.Load().set.Active(alg).ID {
				t.Errorf("Sign returned kid %s; want the active key's", kid)
			}
			got, err := verify(token, jwks)
			if err != nil {
				t.Fatalf("go-jose rejects the token: %v\n%s", err, token)
			}
			if got != kid {
				t.Errorf("token kid %s; Sign returned %s", got, kid)
			}
			parts := strings.Split(string(token), ".")
			if len(parts) != 3 {
				t.Fatalf("token has %d parts", len(parts))
			}
			hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
			if want := fmt.Sprintf(`{"alg":"%s","kid":"%s","typ":"JWT"}`, alg, kid); string(hdr) != want {
				t.Errorf("header %s; want %s", hdr, want)
			}
			if pl, _ := base64.RawURLEncoding.DecodeString(parts[1]); !bytes.Equal(pl, testPayload) {
				t.Errorf("payload %s", pl)
			}
			sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
			wantLen := map[Algorithm]int{ES256: 64, EdDSA: 64, RS256: 256}[alg]
			if len(sig) != wantLen {
				t.Errorf("signature is %d bytes; want %d (ES256 must be r||s, not ASN.1)", len(sig), wantLen)
			}
		})
	}
}

func TestManagerSignErrors(t *testing.T) {
	tm := newTestManager(t, testPolicy(ES256))
	dst := []byte("keep")
	if out, _, err := tm.Sign(dst, "HS256", testPayload); err == nil || string(out) != "keep" {
		t.Errorf("Sign(HS256) = %q, %v; want an error and dst unchanged", out, err)
	}
	if _, _, err := tm.Sign(nil, RS256, testPayload); err == nil || !strings.Contains(err.Error(), "not one of the configured algorithms") {
		t.Errorf("Sign with an unconfigured algorithm = %v", err)
	}
}

func TestP1363FromASN1(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for range 200 { // short r and s (leading zero bytes) come up about 1 in 128
		digest := make([]byte, 32)
		rand.Read(digest)
		der, _ := ecdsa.SignASN1(rand.Reader, k, digest)
		var raw [64]byte
		if err := p1363FromASN1(raw[:], der); err != nil {
			t.Fatal(err)
		}
		// Re-encode and verify with the standard library.
		r, s := raw[:32], raw[32:]
		if !ecdsa.VerifyASN1(&k.PublicKey, digest, asn1Sig(r, s)) {
			t.Fatalf("conversion of %x gave an invalid signature", der)
		}
	}
	for _, bad := range [][]byte{nil, {0x30}, {0x31, 0}, {0x30, 3, 2, 1}, append([]byte{0x30, 36, 2, 34}, make([]byte, 36)...)} {
		var raw [64]byte
		if p1363FromASN1(raw[:], bad) == nil {
			t.Errorf("accepted malformed %x", bad)
		}
	}
}

// asn1Sig DER-encodes r and s as an ECDSA-Sig-Value.
func asn1Sig(r, s []byte) []byte {
	enc := func(v []byte) []byte {
		v = bytes.TrimLeft(v, "\x00")
		if len(v) == 0 || v[0]&0x80 != 0 {
			v = append([]byte{0}, v...)
		}
		return append([]byte{2, byte(len(v))}, v...)
	}
	body := append(enc(r), enc(s)...)
	return append([]byte{0x30, byte(len(body))}, body...)
}

func TestManagerRotation(t *testing.T) {
	p := testPolicy()
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	sign := func(alg Algorithm) []byte {
		out, _, err := tm.Sign(nil, alg, testPayload)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	old := map[Algorithm][]byte{}
	oldKid := map[Algorithm]string{}
	nextKid := map[Algorithm]string{}
	for _, alg := range p.Algorithms {
		old[alg] = sign(alg)
		oldKid[alg] = tm.cur.Load().set.Active(alg).ID
		nextKid[alg] = tm.cur.Load().set.Next(alg).ID
	}

	// Too early: nothing rotates, not even partly.
	v := tm.Version()
	var te *TooEarlyError
	if _, err := tm.Rotate(ctx, nil, false); !errors.As(err, &te) {
		t.Fatalf("Rotate right after start = %v; want *TooEarlyError", err)
	}
	if tm.Version() != v {
		t.Error("a refused rotation changed the key set")
	}

	tm.clk.Advance(p.JWKSMaxAge + p.ClockSkew)
	if _, err := tm.Rotate(ctx, nil, false); err != nil {
		t.Fatal(err)
	}
	jwks, _ := tm.JWKS()
	for _, alg := range p.Algorithms {
		// Tokens of the retired key still verify.
		if _, err := verify(old[alg], jwks); err != nil {
			t.Errorf("%s token signed before rotation no longer verifies: %v", alg, err)
		}
		// New tokens come from the former next key.
		kid, err := verify(sign(alg), jwks)
		if err != nil || kid != nextKid[alg] {
			t.Errorf("%s token after rotation: kid %s, %v; want the former next key %s", alg, kid, err, nextKid[alg])
		}
	}

	// Once every token the retired keys signed has expired, maintenance
	// drops them and their tokens stop verifying.
	tm.clk.Advance(p.MaxTokenTTL + p.ClockSkew)
	tm.maintain(ctx)
	jwks, _ = tm.JWKS()
	for _, alg := range p.Algorithms {
		if tm.cur.Load().set.Key(oldKid[alg]) != nil {
			t.Errorf("retired %s key not pruned", alg)
		}
		if _, err := verify(old[alg], jwks); err == nil {
			t.Errorf("%s token of a pruned key still verifies", alg)
		}
	}

	// Rotating one algorithm leaves the others alone; force skips the lead.
	before := tm.cur.Load().set
	if _, err := tm.Rotate(ctx, []Algorithm{EdDSA}, true); err != nil {
		t.Fatal(err)
	}
	after := tm.cur.Load().set
	if after.Active(EdDSA).ID == before.Active(EdDSA).ID || after.Active(ES256).ID != before.Active(ES256).ID {
		t.Error("forced rotation of EdDSA did not rotate exactly EdDSA")
	}
	if _, err := tm.Rotate(ctx, []Algorithm{"HS256"}, true); err == nil {
		t.Error("Rotate accepted an unconfigured algorithm")
	}
}

func TestManagerRevoke(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	token, kid, err := tm.Sign(nil, ES256, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	next := tm.cur.Load().set.Next(ES256).ID
	if _, err := tm.Revoke(ctx, kid); err != nil {
		t.Fatal(err)
	}
	jwks, _ := tm.JWKS()
	if _, err := verify(token, jwks); err == nil {
		t.Error("a token of a revoked key still verifies")
	}
	out, newKid, err := tm.Sign(nil, ES256, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	if newKid != next {
		t.Errorf("after revoking the active key, signing with %s; want the published next key %s", newKid, next)
	}
	if _, err := verify(out, jwks); err != nil {
		t.Errorf("new token does not verify: %v", err)
	}
	// Persisted: a fresh load has the tombstone without private material.
	s, err := tm.st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k := s.Key(kid); k == nil || k.State != StateRevoked || k.Private != nil {
		t.Errorf("stored revoked key = %+v", k)
	}
	if _, err := tm.Revoke(ctx, "nope"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Revoke(unknown) = %v", err)
	}
}

func TestManagerImport(t *testing.T) {
	p := testPolicy(ES256)
	tm := newTestManager(t, p)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ki, err := tm.Import(testCtx(t), jwkOf(t, k, ""), ES256, true)
	if err != nil {
		t.Fatal(err)
	}
	if ki.State != StateActive {
		t.Errorf("imported with activate: state %s", ki.State)
	}
	token, kid, err := tm.Sign(nil, ES256, testPayload)
	if err != nil || kid != ki.ID {
		t.Fatalf("Sign after import: kid %s, %v; want %s", kid, err, ki.ID)
	}
	jwks, _ := tm.JWKS()
	if _, err := verify(token, jwks); err != nil {
		t.Error(err)
	}
}

// Sign runs lock-free while the key set changes underneath.
func TestManagerSignDuringChanges(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, alg := range p.Algorithms {
		wg.Go(func() {
			buf := make([]byte, 0, 512)
			for {
				select {
				case <-stop:
					return
				default:
				}
				out, _, err := tm.Sign(buf[:0], alg, testPayload)
				if err != nil {
					t.Error(err)
					return
				}
				// The token verifies against the JWKS published now: its
				// key is active or just retired.
				jwks, _ := tm.JWKS()
				if _, err := verify(out, jwks); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 5 {
		if _, err := tm.Rotate(ctx, nil, true); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestManagerLogsNoPrivateMaterial(t *testing.T) {
	p := testPolicy()
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	secrets := map[string]bool{}
	collect := func() {
		data := tm.st.raw()
		var doc setDoc
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		for _, d := range doc.Keys {
			var priv map[string]any
			json.Unmarshal(d.Private, &priv)
			for _, m := range privateMembers {
				if v, ok := priv[m].(string); ok {
					secrets[v] = true
				}
			}
		}
	}
	collect()
	tm.Sign(nil, ES256, testPayload)
	tm.clk.Advance(2 * time.Hour)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := tm.Rotate(ctx, nil, false)
	must(err)
	collect()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err = tm.Import(ctx, pkcs8(t, k), ES256, false)
	must(err)
	collect()
	_, err = tm.Revoke(ctx, tm.cur.Load().set.Active(EdDSA).ID)
	must(err)
	collect()
	// A change by another process, picked up by Reload.
	other := tm.st
	_, err = Update(ctx, other, func(s *Set) error { return s.Rotate(tm.clk.Now().Add(time.Hour), p, RS256, true) })
	must(err)
	collect()
	must(tm.Reload(ctx))
	tm.clk.Advance(p.MaxTokenTTL + 2*p.ClockSkew + time.Hour)
	tm.maintain(ctx)
	collect()
	// A failure path that logs an error.
	tm.st.setRaw([]byte("garbage"))
	tm.reload(ctx)

	logs := tm.log.String()
	t.Logf("log:\n%s", logs)
	if len(secrets) < 10 {
		t.Fatalf("collected only %d private values; the test is not looking", len(secrets))
	}
	for _, m := range privateMembers {
		if strings.Contains(logs, `"`+m+`":`) {
			t.Errorf("log contains a %q member", m)
		}
	}
	for v := range secrets {
		if strings.Contains(logs, v) {
			t.Fatalf("log contains private key material")
		}
	}
	for _, want := range []string{"added as next", "active → retired", "revoked", "removed from the set", "corrupt key set"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func TestManagerReload(t *testing.T) {
	p := testPolicy(ES256)
	tm := newTestManager(t, p)
	ctx := testCtx(t)
	other := tm.st // another process's writes
	s, err := Update(ctx, other, func(s *Set) error { return s.Rotate(t0.Add(time.Hour), p, ES256, true) })
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, kid, _ := tm.Sign(nil, ES256, testPayload); kid != s.Active(ES256).ID {
		t.Error("Reload did not switch to the stored set")
	}
	// A deleted key file must not stop signing.
	tm.st.setRaw(nil)
	if err := tm.Reload(ctx); err == nil || !strings.Contains(err.Error(), "keeping the current keys") {
		t.Errorf("Reload of an empty store = %v; want a refusal", err)
	}
	if _, kid, err := tm.Sign(nil, ES256, testPayload); err != nil || kid != s.Active(ES256).ID {
		t.Errorf("after a refused reload Sign = %s, %v", kid, err)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestManagerRun(t *testing.T) {
	p := testPolicy(ES256)
	p.RotationPeriod, p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL = 2*time.Hour, time.Hour, time.Minute, 3*time.Hour
	var leader sync.Mutex // guards isLeader
	isLeader := false
	tm := newTestManager(t, p,
		func(m *Manager) { m.tick = 5 * time.Millisecond },
		WithShouldRotate(func() bool { leader.Lock(); defer leader.Unlock(); return isLeader }))
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan struct{})
	go func() {
		tm.Run(ctx)
		close(done)
	}()
	first := tm.cur.Load().set.Active(ES256).ID

	// Due, but not the leader: nothing happens.
	tm.clk.Advance(2 * time.Hour)
	time.Sleep(100 * time.Millisecond)
	if tm.cur.Load().set.Active(ES256).ID != first {
		t.Fatal("a non-leader rotated")
	}
	if st := tm.Status(tm.clk.Now()); !st.Algorithms[0].RotationDue {
		t.Error("Status does not report the rotation as due")
	}
	leader.Lock()
	isLeader = true
	leader.Unlock()
	waitFor(t, "scheduled rotation", func() bool { return tm.cur.Load().set.Active(ES256).ID != first })
	if k := tm.cur.Load().set.Key(first); k.State != StateRetired {
		t.Errorf("first key is %s after scheduled rotation", k.State)
	}
	// Retention passes: the retired key is pruned.
	tm.clk.Advance(p.MaxTokenTTL + p.ClockSkew)
	waitFor(t, "pruning", func() bool { return tm.cur.Load().set.Key(first) == nil })

	// A write by another process reaches the running Manager by Watch.
	other := tm.st // another process's writes
	s, err := Update(ctx, other, func(s *Set) error { return s.Rotate(tm.clk.Now(), p, ES256, true) })
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload after an outside change", func() bool { return tm.Version() == s.Version })

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after ctx was canceled")
	}
}

func TestManagerStatus(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	tm := newTestManager(t, p)
	st := tm.Status(t0)
	if st.Version != tm.Version() || len(st.Algorithms) != 2 || len(st.Guarantees) != 2 {
		t.Fatalf("Status = %+v", st)
	}
	for _, a := range st.Algorithms {
		s := tm.cur.Load().set
		if a.Active != s.Active(a.Algorithm).ID || a.Next != s.Next(a.Algorithm).ID {
			t.Errorf("%s: active/next kids wrong", a.Algorithm)
		}
		if want := t0.Add(p.RotationPeriod); !a.NextRotation.Equal(want) || a.RotationDue {
			t.Errorf("%s: next rotation %v due=%v; want %v, not due", a.Algorithm, a.NextRotation, a.RotationDue, want)
		}
		for _, g := range a.Guarantees {
			if !g.Holds {
				t.Errorf("%s: %s", a.Algorithm, g)
			}
		}
		if g := a.Guarantees[0]; g.Name != "next_published_before_use" || g.Have != p.RotationPeriod {
			t.Errorf("%s: %s; want the rotation period", a.Algorithm, g)
		}
	}
	if s := st.String(); !strings.Contains(s, "next_published_before_use 720h >= 1h2m: holds") {
		t.Errorf("Status.String() =\n%s", s)
	}

	// The admin API sends Status as JSON: snake_case, readable durations,
	// and a lossless round trip.
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"version":`, `"algorithms":[{"algorithm":"ES256","active":"`, `"next_signs_from":"`, `"have":"720h","need":"1h2m","holds":true`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("Status JSON lacks %s:\n%s", want, b)
		}
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.String() != st.String() {
		t.Errorf("Status JSON round trip changed it:\n%s\n%s", back, st)
	}
	if got := StatusOf(tm.cur.Load().set, p, t0); got.String() != st.String() {
		t.Error("StatusOf differs from Manager.Status")
	}
}

func TestManagerListJSON(t *testing.T) {
	p := testPolicy(ES256)
	tm := newTestManager(t, p)
	list, _, err := tm.List(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	var ls []map[string]any
	json.Unmarshal(b, &ls)
	if len(ls) != 2 {
		t.Fatalf("List = %s", b)
	}
	for _, e := range ls {
		for _, k := range []string{"kid", "algorithm", "state", "key_type", "created", "published_at"} {
			if _, ok := e[k]; !ok {
				t.Errorf("entry lacks %q: %v", k, e)
			}
		}
		for _, k := range []string{"retired", "revoked", "remove_at"} {
			if _, ok := e[k]; ok {
				t.Errorf("zero time %q present: %v", k, e)
			}
		}
		switch e["state"] {
		case "next":
			if _, ok := e["signs_from"]; !ok {
				t.Errorf("next entry lacks signs_from: %v", e)
			}
			if _, ok := e["activated"]; ok {
				t.Errorf("next entry has activated: %v", e)
			}
		case "active":
			if _, ok := e["activated"]; !ok {
				t.Errorf("active entry lacks activated: %v", e)
			}
		}
	}
	for _, m := range privateMembers {
		if bytes.Contains(b, []byte(`"`+m+`":`)) {
			t.Errorf("List JSON has private member %q", m)
		}
	}
}

func TestNewManagerRejectsInvalidPolicy(t *testing.T) {
	p := testPolicy()
	p.RotationPeriod = time.Minute
	if _, err := NewManager(testCtx(t), newMemStore(t), p, nil); err == nil || !strings.Contains(err.Error(), "rotation_period") {
		t.Errorf("NewManager with an invalid policy = %v", err)
	}
}
