package keys

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// checkEnsured verifies the invariants plus, for every configured
// algorithm, exactly one active and one next key.
func checkEnsured(t *testing.T, s *Set, p Policy) {
	t.Helper()
	if err := s.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	for _, alg := range p.Algorithms {
		if a, n := count(s, alg, StateActive), count(s, alg, StateNext); a != 1 || n != 1 {
			t.Fatalf("%s: %d active, %d next; want 1 and 1", alg, a, n)
		}
	}
}

func TestEnsure(t *testing.T) {
	p := testPolicy()
	s := ensured(t, p)
	checkEnsured(t, s, p)
	if len(s.Keys) != 6 {
		t.Errorf("%d keys after the first Ensure; want 6", len(s.Keys))
	}
	for _, alg := range p.Algorithms {
		a, n := s.Active(alg), s.Next(alg)
		// The first key of an algorithm signs at once: no verifier can have
		// cached a JWKS without it.
		if !a.Activated.Equal(t0) || !a.Published.Equal(t0) {
			t.Errorf("%s first active key: activated %v, published %v; want both %v", alg, a.Activated, a.Published, t0)
		}
		if !n.Published.Equal(t0) || !n.SignsFrom.Equal(t0.Add(p.JWKSMaxAge+p.ClockSkew)) || !n.Activated.IsZero() {
			t.Errorf("%s next key: published %v, signs from %v, activated %v", alg, n.Published, n.SignsFrom, n.Activated)
		}
		if a.ID == "" || a.ID == n.ID {
			t.Errorf("%s: active kid %q, next kid %q", alg, a.ID, n.ID)
		}
	}

	// A second Ensure changes nothing.
	before := s.Clone()
	if err := s.Ensure(t0.Add(time.Hour), p); err != nil {
		t.Fatal(err)
	}
	if !s.sameAs(before) {
		t.Error("Ensure on a complete set changed it")
	}

	// Adding an algorithm creates its keys and leaves the others alone.
	p1 := testPolicy(ES256)
	s1 := ensured(t, p1)
	before = s1.Clone()
	p2 := testPolicy(ES256, EdDSA)
	if err := s1.Ensure(t0.Add(time.Hour), p2); err != nil {
		t.Fatal(err)
	}
	checkEnsured(t, s1, p2)
	if s1.Active(ES256).ID != before.Active(ES256).ID || s1.Next(ES256).ID != before.Next(ES256).ID {
		t.Error("Ensure touched the keys of an existing algorithm")
	}
	// Removing an algorithm from the policy leaves its keys published.
	if err := s1.Ensure(t0.Add(2*time.Hour), p1); err != nil {
		t.Fatal(err)
	}
	if s1.Active(EdDSA) == nil || s1.Next(EdDSA) == nil {
		t.Error("Ensure dropped keys of an algorithm no longer configured")
	}
}

func TestRotate(t *testing.T) {
	p := testPolicy(ES256, EdDSA, RS256)
	lead := p.JWKSMaxAge + p.ClockSkew
	tests := []struct {
		name    string
		alg     Algorithm
		at      time.Duration // after t0
		force   bool
		wantErr string
	}{
		{"too early", ES256, lead - time.Second, false, "keys: not rotating ES256 yet"},
		{"right after publication", EdDSA, 0, false, "keys: not rotating EdDSA yet"},
		{"exactly at signs_from", ES256, lead, false, ""},
		{"later", RS256, 10 * lead, false, ""},
		{"forced early", EdDSA, time.Second, true, ""},
		{"algorithm not configured", "HS256", lead, false, "keys: cannot rotate HS256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ensured(t, p)
			before := s.Clone()
			now := t0.Add(tt.at)
			oldActive, oldNext := s.Active(tt.alg), s.Next(tt.alg)
			err := s.Rotate(now, p, tt.alg, tt.force)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("Rotate = %v; want %q", err, tt.wantErr)
				}
				if !s.sameAs(before) {
					t.Error("a refused Rotate changed the set")
				}
				return
			}
			if err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			checkEnsured(t, s, p)
			if got := s.Key(oldActive.ID); got.State != StateRetired || !got.Retired.Equal(now) ||
				!got.RemoveAt.Equal(now.Add(p.MaxTokenTTL+p.ClockSkew)) {
				t.Errorf("old active key: %s, retired %v, remove at %v; want retired now, removed after max_token_ttl + clock_skew", got.State, got.Retired, got.RemoveAt)
			}
			if got := s.Active(tt.alg); got.ID != oldNext.ID || !got.Activated.Equal(now) {
				t.Errorf("active key after rotation = %s activated %v; want the old next key %s, activated now", got.ID, got.Activated, oldNext.ID)
			}
			if n := s.Next(tt.alg); n.ID == oldNext.ID || n.ID == oldActive.ID || !n.Published.Equal(now) || !n.SignsFrom.Equal(now.Add(lead)) {
				t.Errorf("new next key = %+v", n)
			}
			// Other algorithms are untouched.
			for _, alg := range p.Algorithms {
				if alg != tt.alg && (s.Active(alg).ID != before.Active(alg).ID || s.Next(alg).ID != before.Next(alg).ID) {
					t.Errorf("rotating %s changed %s", tt.alg, alg)
				}
			}
		})
	}
}

func TestRotateTooEarlyError(t *testing.T) {
	p := testPolicy(ES256)
	p.JWKSMaxAge, p.ClockSkew = time.Hour, 5*time.Minute
	s := ensured(t, p)
	err := s.Rotate(t0.Add(5*time.Minute), p, ES256, false)
	var te *TooEarlyError
	if !errors.As(err, &te) {
		t.Fatalf("Rotate = %v; want a *TooEarlyError", err)
	}
	wantFrom := t0.Add(65 * time.Minute)
	if !te.SignsFrom.Equal(wantFrom) || te.KID != s.Next(ES256).ID {
		t.Errorf("TooEarlyError = %+v; want SignsFrom %v", te, wantFrom)
	}
	msg := err.Error()
	for _, want := range []string{"jwks_max_age 1h + clock_skew 5m", wantFrom.Format(time.RFC3339), "(in 1h)", "force"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

// Raising jwks_max_age after a key was published postpones its first use:
// verifiers may now cache the JWKS longer.
func TestRotateAfterMaxAgeRaised(t *testing.T) {
	p := testPolicy(ES256)
	s := ensured(t, p)
	p2 := p
	p2.JWKSMaxAge = 6 * time.Hour
	at := t0.Add(p.JWKSMaxAge + p.ClockSkew)
	if err := s.Rotate(at, p2, ES256, false); err == nil {
		t.Fatal("Rotate allowed under the old, shorter max-age")
	}
	if err := s.Rotate(t0.Add(p2.JWKSMaxAge+p2.ClockSkew), p2, ES256, false); err != nil {
		t.Fatalf("Rotate after the new lead: %v", err)
	}
}

func TestRevoke(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	now := t0.Add(3 * time.Hour)

	t.Run("active promotes next", func(t *testing.T) {
		s := ensured(t, p)
		act, next := s.Active(ES256), s.Next(ES256)
		if err := s.Revoke(now, p, act.ID); err != nil {
			t.Fatal(err)
		}
		checkEnsured(t, s, p)
		r := s.Key(act.ID)
		if r.State != StateRevoked || r.Private != nil || !r.Revoked.Equal(now) {
			t.Errorf("revoked key = state %s, private %v, revoked %v", r.State, r.Private != nil, r.Revoked)
		}
		if a := s.Active(ES256); a.ID != next.ID || !a.Activated.Equal(now) {
			t.Errorf("active after revoking it = %s; want the already-published next key %s, active now", a.ID, next.ID)
		}
		if n := s.Next(ES256); n.ID == next.ID || !n.Published.Equal(now) {
			t.Errorf("no new next key after revoking the active one")
		}
		if body, _ := RenderJWKS(s); strings.Contains(string(body), act.ID) {
			t.Error("revoked key still in the JWKS")
		}
		if act.Private == nil {
			t.Error("Revoke modified the key of a set it did not own (the original *Key)")
		}
	})
	t.Run("next is replaced", func(t *testing.T) {
		s := ensured(t, p)
		act, next := s.Active(EdDSA), s.Next(EdDSA)
		if err := s.Revoke(now, p, next.ID); err != nil {
			t.Fatal(err)
		}
		checkEnsured(t, s, p)
		if s.Active(EdDSA).ID != act.ID {
			t.Error("revoking the next key changed the active key")
		}
		if n := s.Next(EdDSA); n.ID == next.ID || !n.Published.Equal(now) {
			t.Error("revoked next key not replaced")
		}
	})
	t.Run("retired", func(t *testing.T) {
		s := ensured(t, p)
		old := s.Active(ES256).ID
		if err := s.Rotate(t0.Add(2*time.Hour), p, ES256, false); err != nil {
			t.Fatal(err)
		}
		before := s.Clone()
		if err := s.Revoke(now, p, old); err != nil {
			t.Fatal(err)
		}
		checkEnsured(t, s, p)
		if s.Key(old).State != StateRevoked || s.Active(ES256).ID != before.Active(ES256).ID || s.Next(ES256).ID != before.Next(ES256).ID || len(s.Keys) != len(before.Keys) {
			t.Error("revoking a retired key should change only that key")
		}
	})
	t.Run("unknown kid", func(t *testing.T) {
		s := ensured(t, p)
		before := s.Clone()
		err := s.Revoke(now, p, "no-such-kid")
		if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `"no-such-kid"`) || !strings.HasPrefix(err.Error(), "keys: ") {
			t.Errorf("Revoke(unknown) = %v; want a keys: error naming the kid and wrapping ErrUnknownKey", err)
		}
		if !s.sameAs(before) {
			t.Error("failed Revoke changed the set")
		}
	})
	t.Run("twice", func(t *testing.T) {
		s := ensured(t, p)
		kid := s.Next(ES256).ID
		if err := s.Revoke(now, p, kid); err != nil {
			t.Fatal(err)
		}
		before := s.Clone()
		if err := s.Revoke(now.Add(time.Hour), p, kid); err != nil {
			t.Fatalf("second Revoke: %v", err)
		}
		if !s.sameAs(before) {
			t.Error("revoking a revoked key changed the set")
		}
	})
	t.Run("algorithm no longer configured", func(t *testing.T) {
		s := ensured(t, p)
		act, next := s.Active(EdDSA), s.Next(EdDSA)
		pES := testPolicy(ES256)
		if err := s.Revoke(now, pES, act.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.Check(); err != nil {
			t.Fatal(err)
		}
		// Its next key takes over, but no new keys appear for it.
		if a := s.Active(EdDSA); a == nil || a.ID != next.ID || s.Next(EdDSA) != nil {
			t.Errorf("after revoking the active key of an unconfigured algorithm: active %v, next %v", s.Active(EdDSA), s.Next(EdDSA))
		}
	})
}

func TestPrune(t *testing.T) {
	p := testPolicy(ES256)
	s := ensured(t, p)
	first := s.Active(ES256).ID
	rot := t0.Add(2 * time.Hour)
	if err := s.Rotate(rot, p, ES256, false); err != nil {
		t.Fatal(err)
	}
	revokedKid := s.Next(ES256).ID
	rev := rot.Add(time.Hour)
	if err := s.Revoke(rev, p, revokedKid); err != nil {
		t.Fatal(err)
	}
	removeAt := rot.Add(p.MaxTokenTTL + p.ClockSkew)
	tests := []struct {
		name        string
		p           Policy
		at          time.Time
		wantRetired bool // first key still present
		wantRevoked bool
	}{
		{"before remove_at", p, removeAt.Add(-time.Nanosecond), true, true},
		{"at remove_at", p, removeAt, false, true},
		// A longer max_token_ttl configured after retirement keeps the key
		// longer; a shorter one never drops it early.
		{"max ttl raised", withTTL(p, 48*time.Hour), removeAt, true, true},
		{"max ttl raised, later", withTTL(p, 48*time.Hour), rot.Add(48*time.Hour + p.ClockSkew), false, true},
		{"max ttl lowered", withTTL(p, time.Hour), removeAt.Add(-time.Nanosecond), true, true},
		{"tombstone before retention", p, rev.Add(RevokedRetention - time.Second), false, true},
		{"tombstone after retention", p, rev.Add(RevokedRetention), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := s.Clone()
			before := len(c.Keys)
			n := c.Prune(tt.at, tt.p)
			if n != before-len(c.Keys) {
				t.Errorf("Prune reported %d, removed %d", n, before-len(c.Keys))
			}
			if got := c.Key(first) != nil; got != tt.wantRetired {
				t.Errorf("retired key present = %v; want %v", got, tt.wantRetired)
			}
			if got := c.Key(revokedKid) != nil; got != tt.wantRevoked {
				t.Errorf("tombstone present = %v; want %v", got, tt.wantRevoked)
			}
			checkEnsured(t, c, p) // never prunes active or next keys
		})
	}
}

func withTTL(p Policy, ttl time.Duration) Policy {
	p.MaxTokenTTL = ttl
	return p
}

// TestLifecycleInvariants runs long random sequences of operations and
// checks the invariants after every step, and that a published key never
// disappears before its tokens expire unless revoked.
func TestLifecycleInvariants(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	p.JWKSMaxAge, p.ClockSkew, p.MaxTokenTTL = time.Hour, time.Minute, 6*time.Hour
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		s := ensured(t, p)
		now := t0
		everActive := map[string]bool{}
		for step := range 60 {
			now = now.Add(time.Duration(r.IntN(180)) * time.Minute)
			before := s.Clone()
			alg := p.Algorithms[r.IntN(len(p.Algorithms))]
			var op string
			switch r.IntN(4) {
			case 0:
				op = "rotate"
				err := s.Rotate(now, p, alg, r.IntN(4) == 0)
				var te *TooEarlyError
				if err != nil && !errors.As(err, &te) {
					t.Fatalf("seed %d step %d: Rotate: %v", seed, step, err)
				}
			case 1:
				op = "revoke"
				k := s.Keys[r.IntN(len(s.Keys))]
				if err := s.Revoke(now, p, k.ID); err != nil {
					t.Fatalf("seed %d step %d: Revoke: %v", seed, step, err)
				}
			case 2:
				op = "prune"
				s.Prune(now, p)
			case 3:
				op = "ensure"
				if err := s.Ensure(now, p); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Check(); err != nil {
				t.Fatalf("seed %d step %d (%s): %v", seed, step, op, err)
			}
			checkEnsured(t, s, p)
			for _, k := range s.Keys {
				if k.State == StateActive {
					everActive[k.ID] = true
				}
			}
			// Every key that ever signed and was not revoked is still
			// published until max_token_ttl + skew after it stopped.
			for _, k := range before.Keys {
				if !everActive[k.ID] || k.State == StateRevoked {
					continue
				}
				after := s.Key(k.ID)
				switch {
				case after == nil && k.State != StateRetired:
					t.Fatalf("seed %d step %d (%s): %s key %s vanished", seed, step, op, k.State, k.ID)
				case after == nil && now.Before(k.Retired.Add(p.MaxTokenTTL+p.ClockSkew)):
					t.Fatalf("seed %d step %d (%s): retired key %s pruned before its tokens expired", seed, step, op, k.ID)
				}
			}
		}
	}
}

func TestCheck(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	_, edKey, _ := ed25519.GenerateKey(crand.Reader)
	tests := []struct {
		name    string
		edit    func(s *Set)
		wantErr string
	}{
		{"valid", func(s *Set) {}, ""},
		{"duplicate kid", func(s *Set) { k := *s.Keys[0]; s.Keys = append(s.Keys, &k) }, "appears more than once"},
		{"two active", func(s *Set) { s.Next(ES256).activate(t0) }, "2 active ES256 keys"},
		{"two next", func(s *Set) {
			k, _ := newKey(t0, p, ES256, ecKey)
			s.Keys = append(s.Keys, k)
		}, "2 next ES256 keys"},
		{"next without active", func(s *Set) { s.Active(EdDSA).retire(t0, p) }, "EdDSA has a next key but no active key"},
		{"revoked with private key", func(s *Set) {
			k := s.Active(ES256)
			priv := k.Private
			s.Revoke(t0, p, k.ID)
			s.Key(k.ID).Private = priv
		}, "still holds its private key"},
		{"active without private key", func(s *Set) { s.Active(ES256).Private = nil }, "active key"},
		{"private does not match", func(s *Set) { s.Active(ES256).Private = ecKey }, "does not match"},
		{"kid not the thumbprint", func(s *Set) { s.Active(ES256).ID = "abc" }, "thumbprint"},
		{"wrong key type", func(s *Set) {
			k := s.Active(ES256)
			k.Public, k.Private = edKey.Public(), edKey
		}, "ES256 needs a P-256 EC key"},
		{"unknown state", func(s *Set) { s.Keys[0].State = "old" }, "unknown state"},
		{"retired without date", func(s *Set) {
			s.Rotate(t0.Add(time.Hour), p, ES256, true)
			for _, k := range s.Keys {
				if k.State == StateRetired {
					k.Retired = time.Time{}
				}
			}
		}, "no retired time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ensured(t, p)
			tt.edit(s)
			err := s.Check()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "keys: ") {
				t.Fatalf("Check() = %v; want a keys: error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestList(t *testing.T) {
	p := testPolicy(ES256)
	s := ensured(t, p)
	s.Rotate(t0.Add(2*time.Hour), p, ES256, false)
	s.Revoke(t0.Add(3*time.Hour), p, s.Next(ES256).ID)
	ls := s.List(p)
	var states []string
	for _, ki := range ls {
		states = append(states, string(ki.State))
		if ki.KeyType != "EC P-256" {
			t.Errorf("KeyType = %q", ki.KeyType)
		}
	}
	if got := strings.Join(states, ","); got != "active,next,retired,revoked" {
		t.Errorf("List order = %s", got)
	}
	for _, ki := range ls {
		switch ki.State {
		case StateNext:
			if ki.SignsFrom.IsZero() || !ki.RemoveAt.IsZero() {
				t.Errorf("next entry: %+v", ki)
			}
		case StateRetired:
			if ki.RemoveAt.IsZero() || !ki.SignsFrom.IsZero() {
				t.Errorf("retired entry: %+v", ki)
			}
		}
	}
}
