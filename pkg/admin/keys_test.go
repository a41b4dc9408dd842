package admin

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
)

// newStore returns a file store in a new directory holding a copy of set
// (none if set is nil).
func newStore(t *testing.T, set *keys.Set) keys.Store {
	t.Helper()
	dir, err := os.MkdirTemp("", "adm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := filestore.Open(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if set != nil {
		c := set.Clone()
		c.Version = 0
		if err := st.Save(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// serve serves the admin API of cfg on a new socket until the test ends,
// with the server and listener the daemon uses, and returns the socket's
// path.
func serve(t *testing.T, cfg Config) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "adm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "admin.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cfg)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("admin server: %v", err)
		}
	})
	return sock
}

// administrationPaths are the ways `tsidp keys` and the admin API reach a
// key set in store st: the daemon's Manager directly and over its admin
// socket, and the store itself when no daemon runs. All read the clock
// now.
var administrationPaths = []struct {
	name string
	open func(t *testing.T, st keys.Store, p keys.Policy, now func() time.Time) keys.Administrator
}{
	{"manager", func(t *testing.T, st keys.Store, p keys.Policy, now func() time.Time) keys.Administrator {
		return newManager(t, st, p, now)
	}},
	{"admin socket", func(t *testing.T, st keys.Store, p keys.Policy, now func() time.Time) keys.Administrator {
		return NewClient(serve(t, Config{Keys: newManager(t, st, p, now), Logf: t.Logf}))
	}},
	{"offline", func(t *testing.T, st keys.Store, p keys.Policy, now func() time.Time) keys.Administrator {
		return keys.NewOffline(st, p, now)
	}},
}

func newManager(t *testing.T, st keys.Store, p keys.Policy, now func() time.Time) *keys.Manager {
	t.Helper()
	m, err := keys.NewManager(context.Background(), st, p, t.Logf, keys.WithClock(now))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// outcome is what an operation did, with the kids of keys it generated
// replaced by their algorithm and state (generated keys differ from path to
// path): its answer or error, and the set it left in the store.
type outcome struct {
	Answer, Err, Stored string
}

func outcomeOf(t *testing.T, st keys.Store, p keys.Policy, known []string, answer any, err error) outcome {
	t.Helper()
	set, lerr := st.Load(context.Background())
	if lerr != nil {
		t.Fatal(lerr)
	}
	stored := set.List(p)
	var pairs []string
	for _, k := range stored {
		if !slices.Contains(known, k.ID) {
			pairs = append(pairs, k.ID, fmt.Sprintf("<new %s %s>", k.Algorithm, k.State))
		}
	}
	label := strings.NewReplacer(pairs...)
	js := func(v any) string {
		if b, ok := v.([]byte); ok {
			return label.Replace(string(b))
		}
		b, jerr := json.MarshalIndent(v, "", " ")
		if jerr != nil {
			t.Fatal(jerr)
		}
		return label.Replace(string(b))
	}
	o := outcome{Answer: js(answer), Stored: fmt.Sprintf("version %d\n%s", set.Version, js(stored))}
	if err != nil {
		o.Answer, o.Err = "", err.Error()
	}
	return o
}

// TestOneAdministrationPath runs every key operation through each
// administration path, each time from the same stored set and at the same
// time, and compares what they did: the answer (listing, status, imported
// key, JWKS) or the error, and the set left in the store (which kid holds
// which state, per algorithm, with every date). The Manager, the admin
// socket and the offline CLI path share one implementation of each
// operation, so they cannot drift apart.
func TestOneAdministrationPath(t *testing.T) {
	p := keys.Policy{Algorithms: []keys.Algorithm{keys.ES256, keys.EdDSA}}
	p.Provision()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	initial := &keys.Set{}
	if err := initial.Ensure(t0, p); err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	imported := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	tp, err := (&jose.JSONWebKey{Key: k.Public()}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	importedKID := base64.RawURLEncoding.EncodeToString(tp)
	var known []string
	for _, k := range initial.Keys {
		known = append(known, k.ID)
	}
	known = append(known, importedKID)
	activeES, nextEd := initial.Active(keys.ES256).ID, initial.Next(keys.EdDSA).ID
	ctx := context.Background()
	later := 2 * time.Hour // past jwks_max_age + clock_skew: rotation allowed

	for _, op := range []struct {
		name  string
		start *keys.Set // nil: an empty store
		at    time.Duration
		run   func(a keys.Administrator) (any, error)
	}{
		{"list", initial, later, func(a keys.Administrator) (any, error) {
			l, st, err := a.List(ctx)
			return []any{l, st}, err
		}},
		{"init", initial, later, func(a keys.Administrator) (any, error) { return a.Init(ctx) }},
		{"init an empty store", nil, later, func(a keys.Administrator) (any, error) { return a.Init(ctx) }},
		{"rotate", initial, later, func(a keys.Administrator) (any, error) { return a.Rotate(ctx, nil, false) }},
		{"rotate too early", initial, time.Minute, func(a keys.Administrator) (any, error) { return a.Rotate(ctx, nil, false) }},
		{"rotate ES256 with force", initial, time.Minute, func(a keys.Administrator) (any, error) {
			return a.Rotate(ctx, []keys.Algorithm{keys.ES256}, true)
		}},
		{"rotate an unconfigured algorithm", initial, later, func(a keys.Administrator) (any, error) {
			return a.Rotate(ctx, []keys.Algorithm{keys.RS256}, true)
		}},
		{"revoke the active key", initial, later, func(a keys.Administrator) (any, error) { return a.Revoke(ctx, activeES) }},
		{"revoke the next key", initial, later, func(a keys.Administrator) (any, error) { return a.Revoke(ctx, nextEd) }},
		{"revoke an unknown kid", initial, later, func(a keys.Administrator) (any, error) { return a.Revoke(ctx, "no-such-kid") }},
		{"import", initial, later, func(a keys.Administrator) (any, error) { return a.Import(ctx, imported, keys.ES256, false) }},
		{"import and activate", initial, later, func(a keys.Administrator) (any, error) { return a.Import(ctx, imported, keys.ES256, true) }},
		{"import garbage", initial, later, func(a keys.Administrator) (any, error) { return a.Import(ctx, []byte("not a key"), keys.ES256, false) }},
		{"export the JWKS", initial, later, func(a keys.Administrator) (any, error) { return a.ExportJWKS(ctx) }},
	} {
		t.Run(op.name, func(t *testing.T) {
			now := func() time.Time { return t0.Add(op.at) }
			var want outcome
			for i, path := range slices.Backward(administrationPaths) { // offline first
				st := newStore(t, op.start)
				answer, err := op.run(path.open(t, st, p, now))
				got := outcomeOf(t, st, p, known, answer, err)
				if i == len(administrationPaths)-1 {
					want = got
					continue
				}
				if got != want {
					t.Errorf("through the %s:\n%+v\nthrough %s:\n%+v", path.name, got, administrationPaths[len(administrationPaths)-1].name, want)
				}
			}
			t.Logf("%+v", want)
		})
	}
}

// TestOpenKeys: the CLI's keys go through the daemon when one answers on
// the admin socket, and to the store, opened only then, when none runs.
func TestOpenKeys(t *testing.T) {
	p := keys.Policy{Algorithms: []keys.Algorithm{keys.ES256}}
	p.Provision()
	ctx := context.Background()
	st := newStore(t, nil)
	opened := 0
	open := func(context.Context) (keys.Store, error) { opened++; return st, nil }

	sock := filepath.Join(t.TempDir(), "admin.sock")
	k, err := OpenKeys(ctx, sock, p, open)
	if err != nil || k.Daemon || opened != 1 {
		t.Fatalf("no daemon: %+v, %v, store opened %d times", k, err, opened)
	}
	if _, ok := k.Administrator.(*keys.Offline); !ok {
		t.Errorf("no daemon: administered by %T, want *keys.Offline", k.Administrator)
	}
	if _, err := k.Init(ctx); err != nil {
		t.Fatal(err)
	}

	sock = serve(t, Config{Keys: newManager(t, st, p, time.Now)})
	k, err = OpenKeys(ctx, sock, p, open)
	if err != nil || !k.Daemon || opened != 1 {
		t.Fatalf("with a daemon: %+v, %v, store opened %d times", k, err, opened)
	}
	if _, ok := k.Administrator.(*Client); !ok {
		t.Errorf("with a daemon: administered by %T, want *admin.Client", k.Administrator)
	}
	k.Close()
}
