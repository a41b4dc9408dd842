package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the tsidp command line as main does and returns what the
// user sees: stdout, stderr and the exit code.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errw bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errw
	if err := app.RunContext(context.Background(), append([]string{"tsidp"}, args...)); err != nil {
		errw.WriteString(oneLine(err) + "\n")
		code = exitCode(err)
	}
	return out.String(), errw.String(), code
}

// TestUsageErrorsAreOneLine: a wrong command line gets one line on stderr
// that says what is wrong, a non-zero exit and no help screen.
func TestUsageErrorsAreOneLine(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "flag provided but not defined: -bogus (see tsidp --help)"},
		{[]string{"bogus"}, `no command "bogus" (see tsidp --help)`},
		{[]string{"serve", "--bogus"}, "-bogus (see tsidp serve --help)"},
		{[]string{"keys", "rotate", "--bogus"}, "-bogus (see tsidp keys rotate --help)"},
		{[]string{"keys", "bogus"}, `no command "keys bogus" (see tsidp keys --help)`},
		{[]string{"token", "--ttl", "5"}, `invalid value "5" for flag -ttl`},
		{[]string{"token"}, "token needs --audience"},
		{[]string{"keys", "revoke"}, "keys revoke needs one KID"},
		{[]string{"keys", "revoke", "a", "b"}, `got also "b"`},
		{[]string{"keys", "list", "extra"}, `keys list takes no arguments, got "extra"`},
		{[]string{"keys", "import", "--state-dir", t.TempDir(), "key.pem"}, "keys import needs --alg"},
	} {
		stdout, stderr, code := runCLI(t, tt.args...)
		if code == 0 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "tsidp: ") || !strings.Contains(stderr, tt.want) {
			t.Errorf("tsidp %s: exit %d, stdout %q, stderr %q; want one line on stderr containing %q and nothing on stdout",
				strings.Join(tt.args, " "), code, stdout, stderr, tt.want)
		}
	}
}

// TestKeysNeedAKeySet: with no daemon and no key set under --state-dir
// (say, a typo), the keys commands fail instead of listing nothing,
// exporting an empty JWKS or starting a new key set, and create nothing.
func TestKeysNeedAKeySet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "typo")
	for _, args := range [][]string{
		{"keys", "list", "--state-dir", dir},
		{"keys", "list", "--json", "--state-dir", dir},
		{"keys", "export-jwks", "--state-dir", dir},
		{"keys", "rotate", "--state-dir", dir},
		{"keys", "rotate", "--force", "--state-dir", dir},
		{"keys", "revoke", "--state-dir", dir, "somekid"},
	} {
		stdout, stderr, code := runCLI(t, args...)
		if code == 0 || stdout != "" || !strings.Contains(stderr, "no key set at "+filepath.Join(dir, "keys", "keyset.json")) || !strings.Contains(stderr, "check --state-dir") {
			t.Errorf("tsidp %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the keys commands created %s (stat: %v)", dir, err)
	}

	// keys init is how to make one without starting the daemon; running
	// it again changes nothing.
	stdout, stderr, code := runCLI(t, "keys", "init", "--state-dir", dir)
	if code != 0 || strings.Count(stdout, "(was -)") != 3 {
		t.Fatalf("init: exit %d, stdout %q, stderr %q; want three new active keys", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "keys", "init", "--state-dir", dir)
	if code != 0 || !strings.Contains(stdout, "a key set exists already") || strings.Count(stdout, "(unchanged)") != 3 {
		t.Errorf("second init: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if _, stderr, code := runCLI(t, "keys", "list", "--state-dir", dir); code != 0 {
		t.Errorf("list after init: exit %d, %s", code, stderr)
	}
}

// TestKeysCommandLine covers how operators actually type the keys
// commands: flags after the argument, revoking twice, a refused rotation.
func TestKeysCommandLine(t *testing.T) {
	dir := t.TempDir()
	pemFile := filepath.Join(t.TempDir(), "key.pem")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)

	// Import may start a key set (migrating before the first start), with
	// its flags after the file, a boolean one among them.
	stdout, stderr, code := runCLI(t, "keys", "import", pemFile, "--alg", "ES256", "--activate", "--state-dir", dir)
	if code != 0 || !strings.Contains(stdout, "imported ES256 key") || !strings.Contains(stdout, "as active") {
		t.Fatalf("import: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	kid := strings.Fields(stdout)[3]

	list := func() map[string]string {
		t.Helper()
		stdout, stderr, code := runCLI(t, "keys", "list", "--json", "--state-dir", dir)
		if code != 0 {
			t.Fatalf("list: exit %d, %s", code, stderr)
		}
		var l struct {
			Keys []struct {
				ID    string `json:"kid"`
				State string `json:"state"`
			} `json:"keys"`
		}
		if err := json.Unmarshal([]byte(stdout), &l); err != nil {
			t.Fatalf("list --json: %v\n%s", err, stdout)
		}
		states := map[string]string{}
		for _, k := range l.Keys {
			states[k.ID] = k.State
		}
		return states
	}
	if got := list()[kid]; got != "active" {
		t.Fatalf("imported key %s is %q, want active", kid, got)
	}

	// Rotating too early is refused and says how to insist.
	_, stderr, code = runCLI(t, "keys", "rotate", "--alg", "ES256", "--state-dir", dir)
	if code == 0 || !strings.Contains(stderr, "not rotating ES256 yet") || !strings.Contains(stderr, "--force") {
		t.Errorf("early rotate: exit %d, stderr %q", code, stderr)
	}

	// Flags after the KID apply.
	stdout, stderr, code = runCLI(t, "keys", "revoke", kid, "--state-dir", dir)
	if code != 0 || !strings.Contains(stdout, "revoked "+kid) {
		t.Fatalf("revoke KID --state-dir: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if got := list()[kid]; got != "revoked" {
		t.Errorf("revoked key is %q", got)
	}
	// Again: nothing to do, and it says so.
	stdout, stderr, code = runCLI(t, "keys", "revoke", "--state-dir", dir, kid)
	if code != 0 || !strings.Contains(stdout, kid+" was already revoked") {
		t.Errorf("second revoke: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	_, stderr, code = runCLI(t, "keys", "revoke", "--state-dir", dir, "no-such-kid")
	if code == 0 || !strings.Contains(stderr, `cannot revoke "no-such-kid": no key has that kid`) || strings.Contains(stderr, "unknown key") {
		t.Errorf("unknown kid: exit %d, stderr %q", code, stderr)
	}
}
