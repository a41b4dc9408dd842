package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tsidp/tsidp/pkg/admin"
	"github.com/tsidp/tsidp/pkg/config"
	"github.com/tsidp/tsidp/pkg/keys"
	"github.com/tsidp/tsidp/pkg/keys/filestore"
)

// runningManager starts a key Manager on the file store of stateDir, with
// the default configuration as the CLI reads it, running (it reloads the
// store when it changes) until the test ends.
func runningManager(t *testing.T, stateDir string) *keys.Manager {
	t.Helper()
	cfg := &config.Config{StateDir: stateDir}
	cfg.Provision()
	p, err := cfg.KeyPolicy()
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(filepath.Join(stateDir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := keys.NewManager(context.Background(), st, p, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// serveAdmin serves m's admin API on stateDir/admin.sock until the test
// ends, with the server the daemon uses.
func serveAdmin(t *testing.T, stateDir string, m *keys.Manager) {
	t.Helper()
	ln, err := admin.Listen(filepath.Join(stateDir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := admin.NewServer(admin.Config{Keys: m, Logf: t.Logf})
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Shutdown(context.Background()); <-done })
}

func nextKID(m *keys.Manager, alg keys.Algorithm) string {
	list, _, _ := m.List(context.Background())
	for _, k := range list {
		if k.Algorithm == alg && k.State == keys.StateNext {
			return k.ID
		}
	}
	return ""
}

func inJWKS(m *keys.Manager, kid string) bool {
	body, _ := m.JWKS()
	return strings.Contains(string(body), `"`+kid+`"`)
}

// TestRevokeSaysWhatChanged: through the daemon's socket, keys revoke says
// the key left the JWKS, and it has. On the store directly, with a tsidp
// running on that store but not reachable over the socket, it says only the
// store changed and that the running tsidp drops the key when it next reads
// the store; which it does, about a second later.
func TestRevokeSaysWhatChanged(t *testing.T) {
	t.Run("through the daemon", func(t *testing.T) {
		dir := t.TempDir()
		m := runningManager(t, dir)
		serveAdmin(t, dir, m)
		kid := nextKID(m, keys.ES256)
		stdout, stderr, code := runCLI(t, "keys", "revoke", "--state-dir", dir, kid)
		if code != 0 || !strings.Contains(stdout, "revoked "+kid+": it is no longer in the JWKS\n") {
			t.Fatalf("revoke: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if inJWKS(m, kid) {
			t.Error("the daemon still publishes the key the CLI says left the JWKS")
		}
		stdout, _, _ = runCLI(t, "keys", "revoke", "--state-dir", dir, kid)
		if !strings.Contains(stdout, kid+" was already revoked: it is not in the JWKS\n") {
			t.Errorf("second revoke: %q", stdout)
		}
	})
	t.Run("on the store", func(t *testing.T) {
		dir := t.TempDir()
		m := runningManager(t, dir) // no admin socket: the CLI cannot reach it
		kid := nextKID(m, keys.ES256)
		stdout, stderr, code := runCLI(t, "keys", "revoke", "--state-dir", dir, kid)
		want := "revoked " + kid + " in the key store (no tsidp answered on the admin socket): a tsidp running on this store drops it from its JWKS when it next reads the store, within about a second with the file store and at once with etcd\n"
		if code != 0 || !strings.Contains(stdout, want) || strings.Contains(stdout, "no longer in the JWKS") {
			t.Fatalf("revoke: exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
		}
		for start := time.Now(); inJWKS(m, kid); time.Sleep(20 * time.Millisecond) {
			if time.Since(start) > 5*time.Second {
				t.Fatal("the running tsidp still publishes the revoked key 5s later")
			}
		}
		stdout, _, _ = runCLI(t, "keys", "revoke", "--state-dir", dir, kid)
		if !strings.Contains(stdout, kid+" was already revoked in the key store\n") || strings.Contains(stdout, "JWKS") {
			t.Errorf("second revoke: %q", stdout)
		}
	})
}

// TestImportIntoEmptyStore: without a daemon, a key imported into a state
// dir with no key set yet (migrating an issuer before the first start)
// becomes the active key, as docs/keys.md says and the daemon's order
// gives, and the configuration's other keys are generated.
func TestImportIntoEmptyStore(t *testing.T) {
	dir := t.TempDir()
	key, kid := dashKeyPEM(t)
	file := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(file, key, 0o600)
	stdout, stderr, code := runCLI(t, "keys", "import", "--state-dir", dir, "--alg", "ES256", file)
	if code != 0 || stdout != "imported ES256 key "+kid+" as active\n" {
		t.Fatalf("import: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, _, _ = runCLI(t, "keys", "list", "--state-dir", dir)
	if n, m := len(regexp.MustCompile(`(?m)^\w+ +active `).FindAllString(stdout, -1)), len(regexp.MustCompile(`(?m)^\w+ +next `).FindAllString(stdout, -1)); n != 3 || m != 3 {
		t.Errorf("keys list after the import:\n%s", stdout)
	}
}
