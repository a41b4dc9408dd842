package integration

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tsidp/tsidp/pkg/admin"
)

// thumbprint is the RFC 7638 kid of a public key.
func thumbprint(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

func hasKID(set jose.JSONWebKeySet, kid string) bool { return len(set.Key(kid)) == 1 }

// TestKeysLifecycleCLI drives the key lifecycle through the real binary,
// as an operator would: the status view, emergency revocation of the
// active key (the published next key takes over at once), import of keys
// from another issuer (PEM as next, JWK activated), export of the public
// JWKS, through a running daemon's admin socket and on the store directly
// once the daemon is stopped.
func TestKeysLifecycleCLI(t *testing.T) {
	dir := shortTempDir(t)
	state := dir + "/state"
	cfg := writeFile(t, dir, "tsidp.yaml", perAlgAudiences)
	listen, tagged := freeAddr(t), freeAddr(t)
	p := startBin(t, tsidpBinary(t), nil, "sandbox", "--listen", listen, "--listen-tagged", tagged, "--listen-app", freeAddr(t), "--state-dir", state, "--config", cfg)
	p.waitLine(t, "Press Ctrl-C to stop", 90*time.Second)
	iss := "http://" + listen
	hc := httpClient()
	token := func(aud string) string {
		t.Helper()
		status, ta, _ := postToken(t, hc, iss, url.Values{"audience": {aud}})
		if status != 200 {
			t.Fatalf("token %s: %d %+v", aud, status, ta)
		}
		return ta.AccessToken
	}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := runTSIDP(t, args...)
		if code != 0 {
			t.Fatalf("tsidp %v: exit %d: %s\n%s", args, code, errOut, p.log())
		}
		return out
	}

	// The status view: states and times per key, when the next rotation
	// happens, and the guarantees with the configured numbers.
	out := run("keys", "list", "--state-dir", state)
	for _, want := range []string{"ALG", "STATE", "KID", "CREATED", "ACTIVATED", "SIGNS FROM / LEAVES JWKS",
		"key set version 1", "policy: next_published_before_use 720h >= 3s: holds", "policy: retired_retention",
		"ES256: active ", "; scheduled rotation ", "RS256: active ", "EdDSA: active "} {
		if !strings.Contains(out, want) {
			t.Errorf("keys list lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "BROKEN") {
		t.Errorf("keys list reports a broken guarantee:\n%s", out)
	}
	l := keysList(t, "--state-dir", state)
	act := l.active(t, "ES256", "RS256", "EdDSA")
	var nextES string
	for _, k := range l.Keys {
		if k.Algorithm == "ES256" && k.State == "next" {
			nextES = k.KID
		}
	}

	// Emergency revoke of the active ES256 key.
	oldTok := token("es")
	if kidOf(t, oldTok) != act["ES256"] {
		t.Fatalf("es token signed by %s, active is %s", kidOf(t, oldTok), act["ES256"])
	}
	jwks := fetchJWKS(t, hc, iss)
	if !hasKID(jwks, nextES) {
		t.Fatalf("next key %s is not published before it is needed", nextES)
	}
	out = run("keys", "revoke", "--state-dir", state, act["ES256"])
	for _, want := range []string{"revoked " + act["ES256"] + ": it is no longer in the JWKS", "ES256: active key " + nextES + " (was " + act["ES256"] + ")"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys revoke output lacks %q:\n%s", want, out)
		}
	}
	jwks = fetchJWKS(t, hc, iss)
	if hasKID(jwks, act["ES256"]) {
		t.Error("the revoked key is still in the JWKS")
	}
	if err := verifyWith(jwks, oldTok); err == nil {
		t.Error("a token signed by the revoked key still verifies")
	}
	newTok := token("es")
	if kidOf(t, newTok) != nextES {
		t.Errorf("after revocation tokens are signed by %s, want the former next key %s", kidOf(t, newTok), nextES)
	}
	if err := verifyWith(jwks, newTok); err != nil {
		t.Errorf("a token after revocation does not verify with the JWKS fetched right after it: %v", err)
	}
	if l := keysList(t, "--state-dir", state); l.state(act["ES256"]) != "revoked" || l.state(nextES) != "active" {
		t.Errorf("after revoke: %s is %q, %s is %q", act["ES256"], l.state(act["ES256"]), nextES, l.state(nextES))
	}
	// Revoking it again is harmless; an unknown kid is a one-line error.
	run("keys", "revoke", "--state-dir", state, act["ES256"])
	if _, errOut, code := runTSIDP(t, "keys", "revoke", "--state-dir", state, "no-such-kid"); code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "no-such-kid") {
		t.Errorf("revoke of an unknown kid: exit %d %q", code, errOut)
	}

	// Import a P-256 key from another issuer (PKCS#8 PEM) as the next key.
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	pemFile := writeFile(t, dir, "old-issuer.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	ecKID := thumbprint(t, &ecKey.PublicKey)
	out = run("keys", "import", "--alg", "ES256", "--state-dir", state, pemFile)
	if want := "imported ES256 key " + ecKID + " as next"; !strings.Contains(out, want) {
		t.Errorf("import output %q; want %q", out, want)
	}
	if !hasKID(fetchJWKS(t, hc, iss), ecKID) {
		t.Error("the imported next key is not published")
	}
	// Import an Ed25519 private JWK and activate it at once (migrating an
	// issuer whose verifiers already trust that key).
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	jwkJSON, _ := (&jose.JSONWebKey{Key: edKey, Algorithm: "EdDSA", Use: "sig"}).MarshalJSON()
	jwkFile := writeFile(t, dir, "old-issuer.jwk", string(jwkJSON))
	edKID := thumbprint(t, edKey.Public())
	out = run("keys", "import", "--alg", "EdDSA", "--activate", "--state-dir", state, jwkFile)
	if want := "imported EdDSA key " + edKID + " as active"; !strings.Contains(out, want) {
		t.Errorf("import output %q; want %q", out, want)
	}
	edTok := token("ed")
	if kidOf(t, edTok) != edKID {
		t.Errorf("ed token signed by %s, want the imported key %s", kidOf(t, edTok), edKID)
	}
	// Verifiers that trusted the old issuer's public key accept it as is.
	parsed, err := jwt.ParseSigned(edTok, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var claims jwt.Claims
	if err := parsed.Claims(edKey.Public(), &claims); err != nil {
		t.Errorf("the token does not verify with the imported key's public half: %v", err)
	}
	// A key of the wrong type, a public key, and the same key twice are
	// refused in one line.
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaFile := writeFile(t, dir, "rsa.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER})))
	pubJWK, _ := (&jose.JSONWebKey{Key: edKey.Public()}).MarshalJSON()
	pubFile := writeFile(t, dir, "pub.jwk", string(pubJWK))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--alg", "ES256", rsaFile}, "ES256"},
		{[]string{"--alg", "EdDSA", pubFile}, "public key"},
		{[]string{"--alg", "EdDSA", jwkFile}, "already in the set"},
	} {
		_, errOut, code := runTSIDP(t, append([]string{"keys", "import", "--state-dir", state}, tc.args...)...)
		errOut = strings.TrimSpace(errOut)
		if code == 0 || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "\n") || !strings.HasPrefix(errOut, "tsidp: ") {
			t.Errorf("import %v: exit %d %q; want one line containing %q", tc.args, code, errOut, tc.want)
		}
	}

	// export-jwks prints exactly what the issuer serves, and no private
	// member.
	served := jwksBodyOf(t, iss)
	exported := run("keys", "export-jwks", "--state-dir", state)
	if exported != served {
		t.Errorf("export-jwks differs from the served JWKS:\n%s\n%s", exported, served)
	}
	checkPublicOnly(t, exported)

	// Stop the daemon; the same commands work on the store directly.
	p.cmd.Process.Signal(syscall.SIGINT)
	if ps := p.waitExit(t, 30*time.Second); !ps.Success() {
		t.Fatalf("sandbox exit: %v\n%s", ps, p.log())
	}
	if _, err := os.Stat(state + "/admin.sock"); err == nil {
		t.Fatal("admin socket left behind")
	}
	if got := run("keys", "export-jwks", "--state-dir", state); got != served {
		t.Errorf("export-jwks from the store differs from what the daemon served:\n%s\n%s", got, served)
	}
	out = run("keys", "revoke", "--state-dir", state, ecKID)
	if !strings.Contains(out, "revoked "+ecKID) {
		t.Errorf("revoke on the store: %s", out)
	}
	l = keysList(t, "--state-dir", state)
	if l.state(ecKID) != "revoked" || l.state(edKID) != "active" {
		t.Errorf("store after revoke: %s %q, %s %q", ecKID, l.state(ecKID), edKID, l.state(edKID))
	}
	l.active(t, "ES256", "RS256", "EdDSA")
	if exported := run("keys", "export-jwks", "--state-dir", state); strings.Contains(exported, ecKID) || !strings.Contains(exported, edKID) {
		t.Errorf("export-jwks after revoking %s:\n%s", ecKID, exported)
	}
}

func jwksBodyOf(t *testing.T, base string) string {
	t.Helper()
	res, err := httpClient().Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkPublicOnly fails if a JWKS document has a private JWK member.
func checkPublicOnly(t *testing.T, doc string) {
	t.Helper()
	for _, m := range []string{"d", "p", "q", "dp", "dq", "qi"} {
		if strings.Contains(doc, `"`+m+`":`) {
			t.Errorf("JWKS has a private member %q", m)
		}
	}
	var set jose.JSONWebKeySet
	if err := jsonUnmarshal(doc, &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("JWKS %q: %v", doc, err)
	}
	for _, k := range set.Keys {
		if !k.IsPublic() {
			t.Errorf("JWKS key %s is not public", k.KeyID)
		}
	}
}

// TestKeyFileDeletedWhileRunning: deleting keyset.json under a running
// daemon neither stops signing nor lets the daemon write a new key set
// over the gap (which would unpublish keys of unexpired tokens): it keeps
// its keys, says so loudly, reports the store degraded, refuses operator
// writes, and resumes when the file is put back.
func TestKeyFileDeletedWhileRunning(t *testing.T) {
	dir := shortTempDir(t)
	state := dir + "/state"
	metrics := freeAddr(t)
	cfg := writeFile(t, dir, "tsidp.yaml", "admin:\n  metrics_listen: "+metrics+"\n"+perAlgAudiences)
	listen, tagged := freeAddr(t), freeAddr(t)
	p := startBin(t, tsidpBinary(t), nil, "sandbox", "-v", "--listen", listen, "--listen-tagged", tagged, "--listen-app", freeAddr(t), "--state-dir", state, "--config", cfg)
	p.waitLine(t, "Press Ctrl-C to stop", 90*time.Second)
	iss := "http://" + listen
	hc := httpClient()
	kf := state + "/keys/keyset.json"
	saved, err := os.ReadFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	status, before, _ := postToken(t, hc, iss, url.Values{"audience": {"es"}})
	if status != 200 {
		t.Fatal(status)
	}
	jwks := jwksBodyOf(t, iss)
	metric := func(name string) string {
		res, err := hc.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				return v
			}
		}
		t.Fatalf("no metric %s", name)
		return ""
	}

	if err := os.Remove(kf); err != nil {
		t.Fatal(err)
	}
	var rd readiness
	waitFor(t, "/readyz to report the store", 10*time.Second, func() bool {
		res, err := hc.Get(iss + "/readyz")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		rd = readiness{code: res.StatusCode}
		jsonUnmarshal(string(b), &rd)
		return rd.Status == "degraded"
	})
	if rd.code != 200 {
		t.Errorf("/readyz with the key file gone: %d", rd.code)
	}
	if !strings.Contains(fmt.Sprint(rd.Checks), "{store degraded ") || strings.Contains(fmt.Sprint(rd.Checks), "keyset.json") {
		t.Errorf("store check: %+v; want degraded, without internal detail", rd.Checks)
	}
	// The detail is in the admin status, for the operator.
	actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	st, err := admin.NewClient(state + "/admin.sock").Status(actx)
	cancel()
	if err != nil || !strings.Contains(st.Store, "the key store is empty") {
		t.Errorf("admin status store = %q, %v; want why", st.Store, err)
	}
	status, after, _ := postToken(t, hc, iss, url.Values{"audience": {"es"}})
	if status != 200 || kidOf(t, after.AccessToken) != kidOf(t, before.AccessToken) {
		t.Errorf("token with the key file gone: %d, kid %s", status, kidOf(t, after.AccessToken))
	}
	if jwksBodyOf(t, iss) != jwks {
		t.Error("JWKS changed")
	}
	_, errOut, code := runTSIDP(t, "keys", "rotate", "--force", "--state-dir", state)
	if code == 0 || !strings.Contains(errOut, "Refusing to write over it") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("rotate over a deleted key file: exit %d %q", code, errOut)
	}
	if _, err := os.Stat(kf); err == nil {
		t.Fatal("the daemon wrote a new key file over the deleted one")
	}
	if metric("tsidp_store_regressed") != "1" {
		t.Error("tsidp_store_regressed is not 1")
	}
	if len(linesWith(p.log(), "keys: ALERT: the key store is empty")) == 0 {
		t.Errorf("no ALERT in the log:\n%s", p.log())
	}

	// Put it back: the daemon resumes.
	if err := os.WriteFile(kf, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz ready again", 10*time.Second, func() bool {
		res, err := hc.Get(iss + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200 && metric("tsidp_store_regressed") == "0"
	})
	if _, errOut, code := runTSIDP(t, "keys", "rotate", "--force", "--state-dir", state); code != 0 {
		t.Errorf("rotate after the file came back: %s", errOut)
	}
}
