package etcdstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore"
	"github.com/tsidp/tsidp/pkg/keys/etcdstore/etcdtest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func policy(algs ...keys.Algorithm) keys.Policy {
	p := keys.Policy{Algorithms: algs}
	p.Provision()
	return p
}

// privateMembers are the JWK members that hold private key material
// (RFC 7518 §6.2.2, §6.3.2; RFC 8037 uses "d" too).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth"}

// fullSet returns a set with keys of every algorithm in every state.
func fullSet(t testing.TB) *keys.Set {
	t.Helper()
	p := policy(keys.ES256, keys.RS256, keys.EdDSA)
	s := &keys.Set{}
	if err := s.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	for _, alg := range p.Algorithms {
		if err := s.Rotate(t0.Add(time.Hour), p, alg, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Revoke(t0.Add(2*time.Hour), p, s.Next(keys.EdDSA).ID); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSealedAtRest reads the raw etcd value: no private JWK member, every
// private key sealed; the wrong KEK cannot open it; sealed keys cannot be
// moved between entries; a cleartext key set planted in etcd is refused.
func TestSealedAtRest(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := testCtx(t)
	sl := newSealer(t)
	st := openStore(t, c, sl, "/sealed/")
	set := fullSet(t)
	if err := st.Save(ctx, set); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Client().Get(ctx, "/sealed/keyset")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("raw get: %v, %d kvs", err, len(resp.Kvs))
	}
	raw := resp.Kvs[0].Value

	// Structure: every non-revoked key has a sealed private half and no
	// cleartext one; nothing anywhere has a private JWK member.
	var doc struct {
		Keys []map[string]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	sealed := 0
	for _, k := range doc.Keys {
		if _, ok := k["private"]; ok {
			t.Errorf("key %s has a cleartext private member", k["kid"])
		}
		if _, ok := k["sealed_private"]; ok {
			sealed++
		}
		var pub map[string]any
		json.Unmarshal(k["public"], &pub)
		for _, m := range privateMembers {
			if _, ok := pub[m]; ok {
				t.Errorf("public JWK of %s has private member %q", k["kid"], m)
			}
		}
	}
	if want := len(set.Keys) - 1; sealed != want { // one revoked key
		t.Errorf("%d sealed private keys, want %d", sealed, want)
	}
	for _, m := range privateMembers {
		if bytes.Contains(raw, []byte(`"`+m+`":`)) {
			t.Errorf("etcd value contains a %q JSON member", m)
		}
	}
	// And no private value of any key appears, in any member.
	for _, v := range privateValues(t, set) {
		if bytes.Contains(raw, []byte(v)) {
			t.Fatal("etcd value contains private key material")
		}
	}

	// The right KEK loads it; a different one fails without leaking.
	if got, err := st.Load(ctx); err != nil || len(got.Keys) != len(set.Keys) {
		t.Fatalf("Load = %v, %v", got, err)
	}
	other := openStore(t, c, newSealer(t), "/sealed/")
	_, err = other.Load(ctx)
	if err == nil || !strings.Contains(err.Error(), "wrong sealing key") || !strings.HasPrefix(err.Error(), "etcdstore: ") {
		t.Errorf("Load with another KEK: %v", err)
	}
	// A writer with the wrong KEK cannot replace the set either: it
	// cannot load it, so Update never reaches Save.
	if _, err := keys.Update(ctx, other, func(s *keys.Set) error { return s.Ensure(t0, policy(keys.ES256)) }); err == nil {
		t.Error("Update with the wrong KEK succeeded")
	}

	// Swapping two sealed private keys between entries is detected (the
	// kid is the ciphertext's additional data).
	var full map[string]any
	json.Unmarshal(raw, &full)
	ks := full["keys"].([]any)
	var a, b map[string]any
	for _, k := range ks {
		km := k.(map[string]any)
		if km["alg"] == "ES256" && km["sealed_private"] != nil {
			if a == nil {
				a = km
			} else if b == nil {
				b = km
			}
		}
	}
	a["sealed_private"], b["sealed_private"] = b["sealed_private"], a["sealed_private"]
	tampered, _ := json.Marshal(full)
	if _, err := st.Client().Put(ctx, "/sealed/keyset", string(tampered)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(ctx); err == nil || !errors.Is(err, keys.ErrCorrupt) {
		t.Errorf("Load of swapped sealed keys: %v; want a corrupt-set error", err)
	}

	// Someone who can write to etcd but has no KEK cannot plant a key set
	// of their own: replicas refuse it rather than publish and sign with it.
	planted, err := keys.MarshalSet(fullSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Client().Put(ctx, "/sealed/keyset", string(planted)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(ctx); !errors.Is(err, keys.ErrCorrupt) || !strings.Contains(err.Error(), "not authenticated") {
		t.Errorf("Load of a planted cleartext key set: %v; want it refused", err)
	}
}

// TestCorruptValueNotOverwritten: a value that is not a key set document
// is an error for Load and Save, never an empty set to overwrite.
func TestCorruptValueNotOverwritten(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := testCtx(t)
	st := openStore(t, c, newSealer(t), "/corrupt/")
	st.Client().Put(ctx, "/corrupt/keyset", "garbage")
	if _, err := st.Load(ctx); !errors.Is(err, keys.ErrCorrupt) {
		t.Errorf("Load of garbage: %v", err)
	}
	s := &keys.Set{}
	s.Ensure(t0, policy(keys.ES256))
	if err := st.Save(ctx, s); err == nil {
		t.Error("Save over garbage succeeded")
	}
	st.Client().Put(ctx, "/corrupt/keyset", `{"format":99,"version":3}`)
	if err := st.Save(ctx, s); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Errorf("Save over a newer format: %v", err)
	}
	resp, _ := st.Client().Get(ctx, "/corrupt/keyset")
	if string(resp.Kvs[0].Value) != `{"format":99,"version":3}` {
		t.Error("the newer-format document was overwritten")
	}
}

// privateValues returns every private JWK member value of set's keys, from
// the cleartext encoding the file store uses.
func privateValues(t testing.TB, set *keys.Set) []string {
	t.Helper()
	doc, err := keys.MarshalSet(set)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Keys []struct {
			Private map[string]any `json:"private"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range d.Keys {
		for _, m := range privateMembers {
			if v, ok := k.Private[m].(string); ok && v != "" {
				out = append(out, v)
			}
		}
	}
	if len(out) < 10 {
		t.Fatalf("found only %d private values; the test is not looking", len(out))
	}
	return out
}

func TestKEKForms(t *testing.T) {
	dir := t.TempDir()
	key := make([]byte, 32)
	rand.Read(key)
	forms := map[string][]byte{
		"raw":        key,
		"hex":        []byte(hex.EncodeToString(key) + "\n"),
		"base64":     []byte(base64.StdEncoding.EncodeToString(key) + "\n"),
		"base64raw":  []byte(base64.RawStdEncoding.EncodeToString(key)),
		"base64url":  []byte(base64.URLEncoding.EncodeToString(key)),
		"spaces-hex": []byte("  " + hex.EncodeToString(key) + "  \n"),
	}
	for name, data := range forms {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		got, err := etcdstore.ReadKEK(p)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %x, %v", name, got, err)
		}
		if _, err := etcdstore.LoadKEK(p); err != nil {
			t.Errorf("LoadKEK %s: %v", name, err)
		}
	}
	for name, data := range map[string][]byte{
		"short":      key[:16],
		"hex-short":  []byte(hex.EncodeToString(key[:16])),
		"base64-48":  []byte(base64.StdEncoding.EncodeToString(append(key, key[:16]...))),
		"printable":  []byte(hex.EncodeToString(key[:16])), // 32 characters, no newline
		"empty":      nil,
		"raw-plusnl": append(append([]byte{}, key...), '\n'),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		_, err := etcdstore.ReadKEK(p)
		if err == nil || !strings.Contains(err.Error(), "32 raw bytes") || !strings.Contains(err.Error(), "64 hex digits") {
			t.Errorf("%s: err = %v", name, err)
		}
		if err != nil && strings.Contains(err.Error(), hex.EncodeToString(key[:4])) {
			t.Errorf("%s: the error shows key bytes: %v", name, err)
		}
	}
	// Group- or world-accessible files are refused.
	p := filepath.Join(dir, "loose")
	os.WriteFile(p, []byte(hex.EncodeToString(key)), 0o640)
	os.Chmod(p, 0o640)
	if _, err := etcdstore.ReadKEK(p); err == nil || !strings.Contains(err.Error(), "chmod 0400") {
		t.Errorf("0640 KEK file: %v", err)
	}
	if _, err := etcdstore.ReadKEK(""); err == nil || !strings.Contains(err.Error(), "--kek-file") {
		t.Errorf("no KEK file: %v", err)
	}
	if _, err := etcdstore.ReadKEK(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as KEK: %v", err)
	}
}

// TestOpenIsBounded: an unreachable cluster fails Open within the dial
// timeout, with a message naming the endpoints.
func TestOpenIsBounded(t *testing.T) {
	start := time.Now()
	_, err := etcdstore.Open(testCtx(t), etcdstore.Config{
		Endpoints: []string{"127.0.0.1:1"}, Sealer: newSealer(t), DialTimeout: 500 * time.Millisecond,
	})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.HasPrefix(err.Error(), "etcdstore: ") {
		t.Fatalf("Open of an unreachable cluster: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Open took %v with a 500ms dial timeout", d)
	}
	for _, bad := range [][]string{nil, {"no-port"}, {"https://127.0.0.1:2379"}, {"http://h:1/path"}} {
		if _, err := etcdstore.Open(testCtx(t), etcdstore.Config{Endpoints: bad, Sealer: newSealer(t)}); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	if _, err := etcdstore.Open(testCtx(t), etcdstore.Config{Endpoints: []string{"127.0.0.1:2379"}}); err == nil || !strings.Contains(err.Error(), "sealer") {
		t.Errorf("Open without a sealer: %v", err)
	}
}

// TestConcurrentClients: writers with their own etcd clients (replicas, the
// CLI) rotating the same set at once lose no update.
func TestConcurrentClients(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := testCtx(t)
	sl := newSealer(t)
	p := policy(keys.ES256)
	const writers, each = 3, 10
	stores := make([]*etcdstore.Store, writers)
	for i := range stores {
		stores[i] = openStore(t, c, sl, "/concurrent/")
	}
	init, err := keys.Update(ctx, stores[0], func(s *keys.Set) error { return s.Ensure(t0, p) })
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, writers*each)
	done := make(chan struct{})
	for w, st := range stores {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				now := t0.Add(time.Duration(w*each+i+1) * time.Minute)
				if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Rotate(now, p, keys.ES256, true) }); err != nil {
					errs <- err
				}
			}
		}()
	}
	for range writers {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := stores[1].Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retired := 0
	for _, k := range got.Keys {
		if k.State == keys.StateRetired {
			retired++
		}
	}
	if got.Version != init.Version+writers*each || retired != writers*each {
		t.Errorf("after %d concurrent rotations: version %d (from %d), %d retired keys", writers*each, got.Version, init.Version, retired)
	}
}

// TestWatchRightAway: a Save made right after Watch returns, possibly
// before etcd has registered the watch, is still signalled.
func TestWatchRightAway(t *testing.T) {
	c := etcdtest.Start(t, 1)
	sl := newSealer(t)
	for i := range 20 {
		st := openStore(t, c, sl, "")
		ctx, cancel := context.WithCancel(testCtx(t))
		ch := st.Watch(ctx)
		s := &keys.Set{}
		s.Ensure(t0, policy(keys.ES256))
		if err := st.Save(ctx, s); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: no signal for a Save right after Watch", i)
		}
		cancel()
	}
}

// TestSettingsOpen: the etcd store's configuration opens it from the KEK
// file; with MustExist a prefix without a key set is refused
// (keys.ErrNoKeySet, naming the endpoints and prefix).
func TestSettingsOpen(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := testCtx(t)
	kek := filepath.Join(t.TempDir(), "kek")
	k := make([]byte, etcdstore.KEKSize)
	rand.Read(k)
	if err := os.WriteFile(kek, k, 0o400); err != nil {
		t.Fatal(err)
	}
	s := etcdstore.Settings{Endpoints: c.Endpoints(), Prefix: "/settings/", KEKFile: kek, DialTimeout: 5 * time.Second}
	_, err := s.Open(ctx, keys.OpenOptions{MustExist: true})
	if !errors.Is(err, keys.ErrNoKeySet) || !strings.Contains(err.Error(), `under prefix "/settings/"`) || !strings.Contains(err.Error(), c.Endpoints()[0]) {
		t.Errorf("Open(MustExist) of an empty prefix = %v; want ErrNoKeySet naming it", err)
	}
	st, err := s.Open(ctx, keys.OpenOptions{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := keys.Update(ctx, st, func(s *keys.Set) error { return s.Ensure(t0, policy(keys.ES256)) }); err != nil {
		t.Fatal(err)
	}
	again, err := s.Open(ctx, keys.OpenOptions{MustExist: true})
	if err != nil {
		t.Fatalf("Open(MustExist) with a key set: %v", err)
	}
	again.Close()
	s.KEKFile = ""
	if _, err := s.Open(ctx, keys.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "--kek-file") {
		t.Errorf("Open without a KEK file: %v", err)
	}
}
