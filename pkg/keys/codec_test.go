package keys

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// fullSet returns a set with every algorithm and every state.
func fullSet(t *testing.T) (*Set, Policy) {
	p := testPolicy()
	s := ensured(t, p)
	if err := s.Rotate(t0.Add(2*time.Hour), p, ES256, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(t0.Add(3*time.Hour), p, s.Next(EdDSA).ID); err != nil {
		t.Fatal(err)
	}
	s.Version = 42
	return s, p
}

func TestCodecRoundTrip(t *testing.T) {
	s, _ := fullSet(t)
	data, err := MarshalSet(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalSet(data)
	if err != nil {
		t.Fatalf("UnmarshalSet: %v\n%s", err, data)
	}
	if !got.sameAs(s) {
		t.Errorf("round trip changed the set")
	}
	for _, k := range s.Keys {
		g := got.Key(k.ID)
		if !publicEqual(g.Public, k.Public) {
			t.Errorf("%s: public key changed", k.ID)
		}
		if k.Private != nil && !publicEqual(g.Private.Public(), k.Private.Public()) {
			t.Errorf("%s: private key changed", k.ID)
		}
	}
	// Deterministic: equal sets encode to equal bytes.
	again, _ := MarshalSet(got)
	if !bytes.Equal(data, again) {
		t.Error("re-encoding a decoded set gave other bytes")
	}
	var head struct {
		Format  int   `json:"format"`
		Version int64 `json:"version"`
	}
	json.Unmarshal(data, &head)
	if head.Format != 1 || head.Version != 42 {
		t.Errorf("document head = %+v", head)
	}
}

func TestCodecSealed(t *testing.T) {
	s, _ := fullSet(t)
	key := make([]byte, 32)
	rand.Read(key)
	sl, err := NewAESGCMSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	data, err := MarshalSealedSet(s, sl)
	if err != nil {
		t.Fatal(err)
	}
	var doc setDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, d := range doc.Keys {
		if len(d.Private) != 0 {
			t.Errorf("%s: cleartext private key in a sealed document", d.ID)
		}
		if (d.Sealed != nil) != (d.State != StateRevoked) {
			t.Errorf("%s (%s): sealed=%v", d.ID, d.State, d.Sealed != nil)
		}
	}
	for _, m := range privateMembers {
		if bytes.Contains(data, []byte(`"`+m+`":`)) {
			t.Errorf("sealed document contains member %q", m)
		}
	}
	got, err := UnmarshalSealedSet(data, sl)
	if err != nil {
		t.Fatal(err)
	}
	if !got.sameAs(s) {
		t.Error("sealed round trip changed the set")
	}

	if _, err := UnmarshalSet(data); err == nil || !strings.Contains(err.Error(), "sealing key") {
		t.Errorf("UnmarshalSet of a sealed document = %v; want an error asking for the sealing key", err)
	}
	other, _ := NewAESGCMSealer(make([]byte, 32))
	if _, err := UnmarshalSealedSet(data, other); err == nil || !errors.Is(err, ErrCorrupt) {
		t.Errorf("wrong sealing key: %v", err)
	}
	// Sealed blobs are bound to their kid: swapping two fails.
	var sealed []int
	for i, d := range doc.Keys {
		if d.Sealed != nil {
			sealed = append(sealed, i)
		}
	}
	a, b := sealed[0], sealed[1]
	doc.Keys[a].Sealed, doc.Keys[b].Sealed = doc.Keys[b].Sealed, doc.Keys[a].Sealed
	swapped, _ := json.Marshal(doc)
	if _, err := UnmarshalSealedSet(swapped, sl); err == nil {
		t.Error("swapped sealed private keys were accepted")
	}
	// A sealing store refuses cleartext documents: anyone who can write
	// to etcd could plant one.
	clear, _ := MarshalSet(s)
	if _, err := UnmarshalSealedSet(clear, sl); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not authenticated") {
		t.Errorf("UnmarshalSealedSet of a cleartext document: %v; want it refused", err)
	}
	if _, err := NewAESGCMSealer(make([]byte, 16)); err == nil {
		t.Error("NewAESGCMSealer accepted a 16-byte key")
	}
}

// TestCodecSealedIsAuthenticated shows that someone who can write to a
// sealing store but does not hold the sealing key can change nothing in a
// key set: not plant a key, not bring a revoked key back, not change a
// key's state or dates.
func TestCodecSealedIsAuthenticated(t *testing.T) {
	s, _ := fullSet(t)
	key := make([]byte, 32)
	rand.Read(key)
	sl, _ := NewAESGCMSealer(key)
	data, err := MarshalSealedSet(s, sl)
	if err != nil {
		t.Fatal(err)
	}
	decode := func() setDoc {
		var doc setDoc
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		return doc
	}
	find := func(doc *setDoc, st State) *keyDoc {
		for i := range doc.Keys {
			if doc.Keys[i].State == st {
				return &doc.Keys[i]
			}
		}
		t.Fatalf("no %s key", st)
		return nil
	}
	// The attacker's own key set, written without the sealing key.
	mallory := ensured(t, testPolicy())
	planted, _ := MarshalSet(mallory)
	var plantedDoc setDoc
	json.Unmarshal(planted, &plantedDoc)

	tests := []struct {
		name string
		edit func(doc *setDoc)
	}{
		{"version", func(doc *setDoc) { doc.Version++ }},
		{"revoked key back to retired", func(doc *setDoc) {
			k := find(doc, StateRevoked)
			k.State, k.RemoveAt = StateRetired, t0.Add(1000*time.Hour)
		}},
		{"retired key kept longer", func(doc *setDoc) {
			k := find(doc, StateRetired)
			k.RemoveAt = k.RemoveAt.Add(24 * time.Hour)
		}},
		{"next key activated early", func(doc *setDoc) {
			k := find(doc, StateNext)
			k.SignsFrom = k.Published
		}},
		{"key removed", func(doc *setDoc) {
			k := find(doc, StateRetired)
			doc.Keys = slices.DeleteFunc(doc.Keys, func(d keyDoc) bool { return d.ID == k.ID })
		}},
		{"revoked key's sealed private key put back", func(doc *setDoc) {
			find(doc, StateRevoked).Sealed = find(doc, StateNext).Sealed
		}},
		{"cleartext key planted", func(doc *setDoc) {
			doc.Keys = append(doc.Keys, plantedDoc.Keys[0])
		}},
		{"authentication dropped", func(doc *setDoc) { doc.Auth = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := decode()
			tt.edit(&doc)
			edited, _ := json.Marshal(doc)
			_, err := UnmarshalSealedSet(edited, sl)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "authenticat") {
				t.Errorf("UnmarshalSealedSet of an edited document: %v; want an authentication error", err)
			}
		})
	}
	// Even a document authenticated under the sealing key may not carry
	// a cleartext private key.
	doc := decode()
	doc.Keys = append(doc.Keys, plantedDoc.Keys[0])
	ad, _ := docAD(&doc)
	doc.Auth, _ = sl.Seal(nil, ad)
	withClear, _ := json.Marshal(doc)
	if _, err := UnmarshalSealedSet(withClear, sl); err == nil || !strings.Contains(err.Error(), "cleartext private key") {
		t.Errorf("authenticated document with a cleartext key: %v", err)
	}
	// Formatting does not matter: the compact form reads back.
	compact := decode()
	again, _ := json.Marshal(compact)
	if _, err := UnmarshalSealedSet(again, sl); err != nil {
		t.Errorf("re-formatted document: %v", err)
	}
}

func TestCodecErrors(t *testing.T) {
	s, _ := fullSet(t)
	good, _ := MarshalSet(s)
	edit := func(f func(doc map[string]any)) []byte {
		var d map[string]any
		json.Unmarshal(good, &d)
		f(d)
		b, _ := json.Marshal(d)
		return b
	}
	firstKey := func(d map[string]any) map[string]any { return d["keys"].([]any)[0].(map[string]any) }
	tests := []struct {
		name        string
		data        []byte
		wantCorrupt bool
		wantErr     string
	}{
		{"empty", nil, true, "keys: corrupt key set: unexpected end of JSON input"},
		{"truncated", good[:len(good)/2], true, "keys: corrupt key set"},
		{"not json", []byte("hello"), true, "keys: corrupt key set"},
		{"no format", []byte(`{"version":1,"keys":[]}`), true, `keys: corrupt key set: no "format" member`},
		{"newer format", []byte(`{"format":2,"version":1,"stuff":[]}`), false, "keys: key set format 2 is not supported (this tsidp reads format 1)"},
		{"unknown member", edit(func(d map[string]any) { d["extra"] = 1 }), true, `unknown field "extra"`},
		{"trailing data", append(append([]byte{}, good...), "{}"...), true, "after top-level value"},
		{"kid mismatch", edit(func(d map[string]any) { firstKey(d)["kid"] = "abc" }), true, "thumbprint"},
		{"private key of another key", edit(func(d map[string]any) {
			ks := d["keys"].([]any)
			ks[0].(map[string]any)["private"] = ks[1].(map[string]any)["private"]
		}), true, ""},
		{"two active", edit(func(d map[string]any) {
			for _, k := range d["keys"].([]any) {
				if k := k.(map[string]any); k["alg"] == "ES256" && k["state"] == "next" {
					k["state"] = "active"
					k["activated"] = t0
				}
			}
		}), true, "2 active ES256 keys"},
		{"EC private scalar of another key", edit(func(d map[string]any) {
			ks := d["keys"].([]any)
			var ecs []map[string]any
			for _, k := range ks {
				if k := k.(map[string]any); k["alg"] == "ES256" && k["private"] != nil {
					ecs = append(ecs, k)
				}
			}
			ecs[0]["private"].(map[string]any)["d"] = ecs[1]["private"].(map[string]any)["d"]
		}), true, "EC private key does not match its public key"},
		{"active without private", edit(func(d map[string]any) { delete(firstKey(d), "private") }), true, "has no private key"},
		{"bad state", edit(func(d map[string]any) { firstKey(d)["state"] = "zombie" }), true, "unknown state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := UnmarshalSet(tt.data)
			if err == nil {
				t.Fatal("UnmarshalSet accepted it")
			}
			if errors.Is(err, ErrCorrupt) != tt.wantCorrupt {
				t.Errorf("errors.Is(%v, ErrCorrupt) = %v; want %v", err, !tt.wantCorrupt, tt.wantCorrupt)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || strings.Count(err.Error(), "keys: ") != 1 {
				t.Errorf("error %q; want one keys: prefix and %q", err, tt.wantErr)
			}
		})
	}
}
