package keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
)

// TestOfflineImportIntoEmptyStore: importing into a store that holds no
// key set (migrating an issuer before tsidp's first start) makes the key
// its algorithm's active key, as the daemon's order of import then fill-in
// does, and adds every other key the policy asks for.
func TestOfflineImportIntoEmptyStore(t *testing.T) {
	p := testPolicy(ES256, EdDSA)
	st := newMemStore(t)
	clk := newFakeClock()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ki, err := NewOffline(st, p, clk.Now).Import(testCtx(t), pkcs8(t, k), ES256, false)
	if err != nil {
		t.Fatal(err)
	}
	if ki.State != StateActive || !ki.Activated.Equal(t0) {
		t.Errorf("imported into an empty store: %+v; want active since %v", ki, t0)
	}
	set, err := st.Load(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if set.Active(ES256).ID != ki.ID || set.Next(ES256) == nil || set.Active(EdDSA) == nil || set.Next(EdDSA) == nil || len(set.Keys) != 4 {
		t.Errorf("stored set after the import: %+v", set.List(p))
	}
}
