package keys

import (
	"context"
	"testing"
)

// BenchmarkSign measures the token hot path: one complete compact JWS per
// op, from every core at once.
//
//	go test -run=^$ -bench=Sign -benchmem ./pkg/keys
func BenchmarkSign(b *testing.B) {
	for _, alg := range []Algorithm{ES256, EdDSA, RS256} {
		b.Run(string(alg), func(b *testing.B) {
			m, err := NewManager(context.Background(), newMemStore(b), testPolicy(alg), nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(testPayload)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 0, 1024)
				for pb.Next() {
					var err error
					if buf, _, err = m.Sign(buf[:0], alg, testPayload); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkJWKS is what serving /.well-known/jwks.json costs tsidp.
func BenchmarkJWKS(b *testing.B) {
	m, err := NewManager(context.Background(), newMemStore(b), testPolicy(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.JWKS()
	}
}
