// Package sessiontest is the conformance suite every session.Store backend
// runs:
//
//	func TestConformance(t *testing.T) {
//		sessiontest.Run(t, func(t *testing.T) func() session.Store { … })
//	}
//
// The function returns an opener: each call opens the same underlying
// store afresh (the suite closes and reopens it to check durability).
package sessiontest

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/session"
)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// Run runs the suite. newStore returns an opener for a fresh, empty store.
func Run(t *testing.T, newStore func(t *testing.T) func() session.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func() session.Store)
	}{
		{"CodeRedeemedOnce", testCodeRedeemedOnce},
		{"CodeExpires", testCodeExpires},
		{"CodeRedeemedConcurrently", testCodeRedeemedConcurrently},
		{"FamilyCompareAndSwap", testFamilyCompareAndSwap},
		{"FamilyUpdatedConcurrently", testFamilyUpdatedConcurrently},
		{"RevokedAccess", testRevokedAccess},
		{"Durable", testDurable},
		{"ContextCanceled", testContextCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			open := newStore(t)
			tt.fn(t, open)
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openClosed(t *testing.T, open func() session.Store) session.Store {
	st := open()
	t.Cleanup(func() { st.Close() })
	return st
}

func code() *session.Code {
	return &session.Code{
		ClientID: "app", RedirectURI: "https://app.example/cb", Challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
		Nonce: "n-0S6_WzA2Mj", Scopes: []string{"openid", "email"},
		Subject:  session.Subject{Subject: "user:1", UserID: "1", NodeID: "nL", NodeAddr: "100.64.0.5"},
		AuthTime: t0, Expires: t0.Add(time.Minute),
	}
}

func family(id string) *session.Family {
	return &session.Family{
		ID: id, ClientID: "app", Scopes: []string{"openid", "offline_access"},
		Subject:  session.Subject{Subject: "user:1", UserID: "1", NodeID: "nL", NodeAddr: "100.64.0.5"},
		AuthTime: t0, Created: t0, LastUsed: t0, IdleTimeout: time.Hour, Expires: t0.Add(24 * time.Hour),
		Current: session.HashOf("secret-0"),
	}
}

func testCodeRedeemedOnce(t *testing.T, open func() session.Store) {
	st, ctx := openClosed(t, open), ctxFor(t)
	h := session.HashOf("code-1")
	want := code()
	if err := st.PutCode(ctx, h, want); err != nil {
		t.Fatal(err)
	}
	// A redemption whose check fails (a wrong PKCE verifier, say) leaves
	// the code to its rightful redeemer.
	errWrongVerifier := errors.New("wrong verifier")
	if got, err := st.RedeemCode(ctx, h, t0, "fam-x", "jti-x", func(c *session.Code) error {
		if c.ClientID != "app" {
			t.Errorf("check saw %+v", c)
		}
		return errWrongVerifier
	}); !errors.Is(err, errWrongVerifier) || got == nil || got.Redeemed {
		t.Errorf("failed check: %+v, %v; want the check's error and the code unredeemed", got, err)
	}
	if err := st.PutCode(ctx, h, code()); !errors.Is(err, session.ErrExists) {
		t.Errorf("PutCode of a taken hash = %v, want ErrExists", err)
	}
	got, err := st.RedeemCode(ctx, h, t0.Add(time.Second), "fam-1", "jti-1", nil)
	if err != nil {
		t.Fatalf("first redemption: %v", err)
	}
	want.Redeemed, want.FamilyID, want.AccessJTI = true, "fam-1", "jti-1"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("redeemed code:\n got %+v\nwant %+v", got, want)
	}
	again, err := st.RedeemCode(ctx, h, t0.Add(2*time.Second), "fam-2", "jti-2", nil)
	if !errors.Is(err, session.ErrRedeemed) || again == nil || again.FamilyID != "fam-1" || again.AccessJTI != "jti-1" {
		t.Errorf("second redemption = %+v, %v; want ErrRedeemed naming what the first issued", again, err)
	}
	if _, err := st.RedeemCode(ctx, session.HashOf("never issued"), t0, "f", "j", nil); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("unknown code: %v, want ErrNotFound", err)
	}
}

func testCodeExpires(t *testing.T, open func() session.Store) {
	st, ctx := openClosed(t, open), ctxFor(t)
	h := session.HashOf("code-2")
	c := code()
	if err := st.PutCode(ctx, h, c); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RedeemCode(ctx, h, c.Expires, "f", "j", nil); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("redeeming at expiry: %v, want ErrNotFound", err)
	}
}

func testCodeRedeemedConcurrently(t *testing.T, open func() session.Store) {
	st, ctx := openClosed(t, open), ctxFor(t)
	h := session.HashOf("code-3")
	if err := st.PutCode(ctx, h, code()); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = st.RedeemCode(ctx, h, t0, "fam", "jti", nil) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, session.ErrRedeemed):
			t.Errorf("concurrent redemption: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent redemptions succeeded, want exactly 1", ok, n)
	}
}

func testFamilyCompareAndSwap(t *testing.T, open func() session.Store) {
	st, ctx := openClosed(t, open), ctxFor(t)
	f := family("fam-cas")
	if err := st.PutFamily(ctx, f); err != nil {
		t.Fatal(err)
	}
	if err := st.PutFamily(ctx, family("fam-cas")); !errors.Is(err, session.ErrExists) {
		t.Errorf("PutFamily of a taken ID = %v, want ErrExists", err)
	}
	got, err := st.Family(ctx, "fam-cas")
	if err != nil || !reflect.DeepEqual(got, f) {
		t.Fatalf("Family = %+v, %v; want %+v", got, err, f)
	}
	next := *got
	next.Current, next.Generation, next.LastUsed = session.HashOf("secret-1"), 1, t0.Add(time.Minute)
	if err := st.UpdateFamily(ctx, &next, 0); err != nil {
		t.Fatal(err)
	}
	stale := *got
	stale.Current, stale.Generation = session.HashOf("secret-x"), 1
	if err := st.UpdateFamily(ctx, &stale, 0); !errors.Is(err, session.ErrConflict) {
		t.Errorf("update from a stale generation = %v, want ErrConflict", err)
	}
	if got, _ := st.Family(ctx, "fam-cas"); !got.Current.Equal(session.HashOf("secret-1")) || got.Generation != 1 {
		t.Errorf("after a refused update: %+v", got)
	}
	if _, err := st.Family(ctx, "nope"); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("unknown family: %v", err)
	}
	if err := st.UpdateFamily(ctx, family("nope"), 0); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("update of an unknown family: %v", err)
	}
}

func testFamilyUpdatedConcurrently(t *testing.T, open func() session.Store) {
	st, ctx := openClosed(t, open), ctxFor(t)
	if err := st.PutFamily(ctx, family("fam-race")); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			f := family("fam-race")
			f.Generation, f.Current = 1, session.HashOf(string(rune('a'+i)))
			errs[i] = st.UpdateFamily(ctx, f, 0)
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, session.ErrConflict):
			t.Errorf("concurrent update: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent rotations of one generation succeeded, want exactly 1", ok, n)
	}
}

func testRevokedAccess(t *testing.T, open func() session.Store) {
	st, ctx := openClosed(t, open), ctxFor(t)
	if r, err := st.AccessRevoked(ctx, "jti-a"); err != nil || r {
		t.Fatalf("AccessRevoked before = %v, %v", r, err)
	}
	if err := st.RevokeAccess(ctx, "jti-a", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r, err := st.AccessRevoked(ctx, "jti-a"); err != nil || !r {
		t.Errorf("AccessRevoked after = %v, %v", r, err)
	}
	if r, _ := st.AccessRevoked(ctx, "jti-b"); r {
		t.Error("another jti is revoked too")
	}
}

// testDurable: what a Store method wrote is there after the store is
// closed and opened again.
func testDurable(t *testing.T, open func() session.Store) {
	ctx := ctxFor(t)
	st := open()
	h := session.HashOf("code-d")
	if err := st.PutCode(ctx, h, code()); err != nil {
		t.Fatal(err)
	}
	f := family("fam-d")
	if err := st.PutFamily(ctx, f); err != nil {
		t.Fatal(err)
	}
	f.Generation, f.Current = 1, session.HashOf("secret-d1")
	if err := st.UpdateFamily(ctx, f, 0); err != nil {
		t.Fatal(err)
	}
	if err := st.RevokeAccess(ctx, "jti-d", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openClosed(t, open)
	if _, err := st.RedeemCode(ctx, h, t0, "f", "j", nil); err != nil {
		t.Errorf("code after reopening: %v", err)
	}
	if got, err := st.Family(ctx, "fam-d"); err != nil || got.Generation != 1 || !got.Current.Equal(session.HashOf("secret-d1")) {
		t.Errorf("family after reopening: %+v, %v", got, err)
	}
	if r, _ := st.AccessRevoked(ctx, "jti-d"); !r {
		t.Error("revocation lost on reopening")
	}
}

func testContextCanceled(t *testing.T, open func() session.Store) {
	st := openClosed(t, open)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := st.PutCode(ctx, session.HashOf("c"), code()); err == nil {
		t.Error("PutCode with a canceled context succeeded")
	}
	if _, err := st.Family(ctx, "x"); err == nil || errors.Is(err, session.ErrNotFound) {
		t.Errorf("Family with a canceled context: %v", err)
	}
}
