package keys

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// RSA key generation takes 50–500 ms (more under -race); hand out a
	// small pool of pre-generated keys instead, round-robin. Sets in tests
	// hold fewer RSA keys than the pool, so kids stay unique per set, and
	// Set.generate would report a collision if not.
	real := generateKey
	generateKey = func(alg Algorithm, bits int) (crypto.Signer, error) {
		if alg == RS256 && bits == 2048 {
			return testRSAKey(), nil
		}
		return real(alg, bits)
	}
	os.Exit(m.Run())
}

const rsaPoolSize = 8

var rsaPool struct {
	mu   sync.Mutex
	keys []*rsa.PrivateKey
	next int
}

// testRSAKey returns the next key of the pool, generating it on first use.
func testRSAKey() *rsa.PrivateKey {
	rsaPool.mu.Lock()
	defer rsaPool.mu.Unlock()
	i := rsaPool.next % rsaPoolSize
	rsaPool.next++
	if i == len(rsaPool.keys) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaPool.keys = append(rsaPool.keys, k)
	}
	return rsaPool.keys[i]
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// t0 is the start of every test's fake timeline.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testPolicy returns the default policy for algs (all if none).
func testPolicy(algs ...Algorithm) Policy {
	p := Policy{Algorithms: algs}
	p.Provision()
	return p
}

// ensured returns a new set with Ensure applied at t0.
func ensured(t testing.TB, p Policy) *Set {
	t.Helper()
	s := &Set{}
	if err := s.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	return s
}

// count returns how many keys of alg are in state st.
func count(s *Set, alg Algorithm, st State) int {
	n := 0
	for _, k := range s.Keys {
		if k.Algorithm == alg && k.State == st {
			n++
		}
	}
	return n
}

// fakeClock is a settable clock for Managers.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
