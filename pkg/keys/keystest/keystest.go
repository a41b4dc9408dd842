// Package keystest is the conformance suite for keys.Store implementations.
// Every backend runs it, the way Dex runs one storage suite against every
// store:
//
//	func TestStore(t *testing.T) {
//		keystest.RunStoreTests(t, func(t *testing.T) keys.Store { return newEmptyStore(t) })
//	}
package keystest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
)

// RunStoreTests checks a Store against the contract documented on
// keys.Store. newStore must return a new, empty store each time it is
// called; the suite closes it.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) keys.Store) {
	open := func(t *testing.T) keys.Store {
		st := newStore(t)
		t.Cleanup(func() { st.Close() })
		return st
	}
	t.Run("LoadEmpty", func(t *testing.T) { testLoadEmpty(t, open(t)) })
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, open(t)) })
	t.Run("VersionsIncrease", func(t *testing.T) { testVersionsIncrease(t, open(t)) })
	t.Run("Conflict", func(t *testing.T) { testConflict(t, open(t)) })
	t.Run("ConflictOnFirstSave", func(t *testing.T) { testConflictOnFirstSave(t, open(t)) })
	t.Run("ConcurrentUpdate", func(t *testing.T) { testConcurrentUpdate(t, open(t)) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, open(t)) })
	t.Run("Close", func(t *testing.T) { testClose(t, newStore(t)) })
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// policy returns a provisioned policy for algs.
func policy(algs ...keys.Algorithm) keys.Policy {
	p := keys.Policy{Algorithms: algs}
	p.Provision()
	return p
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func testLoadEmpty(t *testing.T, st keys.Store) {
	s, err := st.Load(ctxFor(t))
	if err != nil {
		t.Fatalf("Load on an empty store: %v", err)
	}
	if s.Version != 0 || len(s.Keys) != 0 {
		t.Fatalf("Load on an empty store = version %d with %d keys; want version 0, no keys", s.Version, len(s.Keys))
	}
}

func testRoundTrip(t *testing.T, st keys.Store) {
	ctx := ctxFor(t)
	p := policy(keys.ES256, keys.RS256, keys.EdDSA)
	want := &keys.Set{}
	if err := want.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	// One of every state: rotate ES256 (a retired key) and revoke the
	// EdDSA next key (a tombstone, replaced by a new next key).
	if err := want.Rotate(t0.Add(time.Hour), p, keys.ES256, true); err != nil {
		t.Fatal(err)
	}
	if err := want.Revoke(t0.Add(2*time.Hour), p, want.Next(keys.EdDSA).ID); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, want); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if want.Version == 0 {
		t.Fatal("Save left Version at 0")
	}
	got, err := st.Load(ctx)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.Version != want.Version {
		t.Errorf("loaded version %d, saved %d", got.Version, want.Version)
	}
	if err := got.Check(); err != nil {
		t.Errorf("loaded set fails Check: %v", err)
	}
	if len(got.Keys) != len(want.Keys) {
		t.Fatalf("loaded %d keys, saved %d", len(got.Keys), len(want.Keys))
	}
	states := map[keys.State]int{}
	for _, w := range want.Keys {
		g := got.Key(w.ID)
		if g == nil {
			t.Errorf("key %s (%s %s) lost", w.ID, w.Algorithm, w.State)
			continue
		}
		states[g.State]++
		if g.Algorithm != w.Algorithm || g.State != w.State {
			t.Errorf("key %s: loaded %s %s, saved %s %s", w.ID, g.Algorithm, g.State, w.Algorithm, w.State)
		}
		for _, tm := range []struct {
			name      string
			got, want time.Time
		}{
			{"Created", g.Created, w.Created},
			{"Published", g.Published, w.Published},
			{"SignsFrom", g.SignsFrom, w.SignsFrom},
			{"Activated", g.Activated, w.Activated},
			{"Retired", g.Retired, w.Retired},
			{"RemoveAt", g.RemoveAt, w.RemoveAt},
			{"Revoked", g.Revoked, w.Revoked},
		} {
			if !tm.got.Equal(tm.want) {
				t.Errorf("key %s: %s = %v, saved %v", w.ID, tm.name, tm.got, tm.want)
			}
		}
		if !publicEqual(g.Public, w.Public) {
			t.Errorf("key %s: public key changed", w.ID)
		}
		if w.State == keys.StateRevoked {
			if g.Private != nil {
				t.Errorf("revoked key %s came back with a private key", w.ID)
			}
			continue
		}
		if g.Private == nil {
			t.Errorf("key %s (%s) lost its private key", w.ID, w.State)
			continue
		}
		// The loaded private key must sign what the saved public key
		// verifies.
		checkSigns(t, w.ID, g.Private, w.Public)
	}
	for _, s := range []keys.State{keys.StateActive, keys.StateNext, keys.StateRetired, keys.StateRevoked} {
		if states[s] == 0 {
			t.Errorf("round trip covered no %s key", s)
		}
	}
}

func testVersionsIncrease(t *testing.T, st keys.Store) {
	ctx := ctxFor(t)
	p := policy(keys.ES256)
	s := &keys.Set{}
	if err := s.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	last := s.Version
	for i := range 3 {
		if err := s.Rotate(t0.Add(time.Duration(i+1)*time.Hour), p, keys.ES256, true); err != nil {
			t.Fatal(err)
		}
		if err := st.Save(ctx, s); err != nil {
			t.Fatalf("Save #%d: %v", i, err)
		}
		if s.Version <= last {
			t.Fatalf("Save #%d: version went from %d to %d; want it to increase", i, last, s.Version)
		}
		last = s.Version
		got, err := st.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.Version != s.Version || got.Active(keys.ES256).ID != s.Active(keys.ES256).ID {
			t.Fatalf("Load after Save #%d = version %d active %s; want %d, %s", i, got.Version, got.Active(keys.ES256).ID, s.Version, s.Active(keys.ES256).ID)
		}
	}
}

func testConflict(t *testing.T, st keys.Store) {
	ctx := ctxFor(t)
	p := policy(keys.ES256)
	s := &keys.Set{}
	if err := s.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, s); err != nil {
		t.Fatal(err)
	}
	a, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Rotate(t0.Add(time.Hour), p, keys.ES256, true); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, a); err != nil {
		t.Fatalf("first writer: %v", err)
	}
	if err := b.Revoke(t0.Add(time.Hour), p, b.Next(keys.ES256).ID); err != nil {
		t.Fatal(err)
	}
	bv := b.Version
	err = st.Save(ctx, b)
	if !errors.Is(err, keys.ErrConflict) {
		t.Fatalf("second writer with a stale version: err = %v; want ErrConflict", err)
	}
	if b.Version != bv {
		t.Errorf("failed Save changed Version from %d to %d", bv, b.Version)
	}
	got, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != a.Version || got.Active(keys.ES256).ID != a.Active(keys.ES256).ID || len(got.Keys) != len(a.Keys) {
		t.Errorf("after the conflict the store holds version %d; want the first writer's version %d unchanged", got.Version, a.Version)
	}
}

func testConflictOnFirstSave(t *testing.T, st keys.Store) {
	ctx := ctxFor(t)
	p := policy(keys.ES256)
	a, b := &keys.Set{}, &keys.Set{}
	for _, s := range []*keys.Set{a, b} {
		if err := s.Ensure(t0, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Save(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, b); !errors.Is(err, keys.ErrConflict) {
		t.Fatalf("second first-time Save: err = %v; want ErrConflict", err)
	}
	got, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Active(keys.ES256) == nil || got.Active(keys.ES256).ID != a.Active(keys.ES256).ID {
		t.Error("the losing first Save replaced the winner's keys")
	}
}

func testConcurrentUpdate(t *testing.T, st keys.Store) {
	ctx := ctxFor(t)
	p := policy(keys.ES256)
	init, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, p) })
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 4, 5
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				now := t0.Add(time.Duration(w*each+i+1) * time.Minute)
				_, err := keys.Update(ctx, st, func(s *keys.Set) error {
					return s.Rotate(now, p, keys.ES256, true)
				})
				if err != nil {
					t.Errorf("writer %d, update %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	got, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := init.Version + writers*each; got.Version != want {
		t.Errorf("version after %d concurrent updates = %d; want %d (updates were lost)", writers*each, got.Version, want)
	}
	retired := 0
	for _, k := range got.Keys {
		if k.State == keys.StateRetired {
			retired++
		}
	}
	if retired != writers*each {
		t.Errorf("%d retired keys after %d rotations; want %d (rotations were lost)", retired, writers*each, writers*each)
	}
	if err := got.Check(); err != nil {
		t.Error(err)
	}
}

func testWatch(t *testing.T, st keys.Store) {
	w, ok := st.(keys.Watcher)
	if !ok {
		t.Logf("%T does not implement keys.Watcher", st)
		return
	}
	ctx, cancel := context.WithCancel(ctxFor(t))
	ch := w.Watch(ctx)
	s := &keys.Set{}
	if err := s.Ensure(t0, policy(keys.ES256)); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, s); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not signal a Save within 10s")
	}
	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("Watch channel not closed within 10s of ctx being done")
		}
	}
}

func testClose(t *testing.T, st keys.Store) {
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := ctxFor(t)
	if _, err := st.Load(ctx); err == nil {
		t.Error("Load after Close succeeded")
	}
	if err := st.Save(ctx, &keys.Set{}); err == nil {
		t.Error("Save after Close succeeded")
	}
	st.Close() // must not panic
}

func publicEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// checkSigns reports whether priv produces signatures pub verifies.
func checkSigns(t *testing.T, kid string, priv crypto.Signer, pub crypto.PublicKey) {
	t.Helper()
	msg := []byte("keystest " + kid)
	digest := sha256.Sum256(msg)
	var ok bool
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		sig, err := priv.Sign(rand.Reader, digest[:], crypto.SHA256)
		ok = err == nil && ecdsa.VerifyASN1(pub, digest[:], sig)
	case *rsa.PublicKey:
		sig, err := priv.Sign(rand.Reader, digest[:], crypto.SHA256)
		ok = err == nil && rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) == nil
	case ed25519.PublicKey:
		sig, err := priv.Sign(rand.Reader, msg, crypto.Hash(0))
		ok = err == nil && ed25519.Verify(pub, msg, sig)
	}
	if !ok {
		t.Errorf("key %s: the loaded private key does not sign for the saved public key", kid)
	}
}
