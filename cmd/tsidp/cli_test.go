package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/tsidp/tsidp/pkg/clients"
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

// dashKeyPEM returns a new P-256 private key (PKCS#8 PEM) whose kid, its
// RFC 7638 thumbprint, starts with "-", and that kid. About one key in 64
// has one.
func dashKeyPEM(t *testing.T) (pemText []byte, kid string) {
	t.Helper()
	for range 10000 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tp, err := (&jose.JSONWebKey{Key: k.Public()}).Thumbprint(crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if kid := base64.RawURLEncoding.EncodeToString(tp); strings.HasPrefix(kid, "-") {
			der, _ := x509.MarshalPKCS8PrivateKey(k)
			return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), kid
		}
	}
	t.Fatal("no kid starting with - in 10000 keys")
	return nil, ""
}

// TestRevokeDashKID: a kid that starts with "-" is revoked by the
// documented command, flags before the KID, as well as with flags after it,
// after "--", and with the state dir from the environment; unknown flags
// and words that are no kid are still usage errors, and --help helps.
func TestRevokeDashKID(t *testing.T) {
	dir := t.TempDir()
	if _, stderr, code := runCLI(t, "keys", "init", "--state-dir", dir); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	for _, tc := range []struct {
		name string
		args func(kid string) []string
		env  bool
	}{
		{"flags before the KID (docs/keys.md)", func(kid string) []string { return []string{"--state-dir", dir, kid} }, false},
		{"flag=value before the KID", func(kid string) []string { return []string{"--state-dir=" + dir, kid} }, false},
		{"flags after the KID", func(kid string) []string { return []string{kid, "--state-dir", dir} }, false},
		{"after --", func(kid string) []string { return []string{"--state-dir", dir, "--", kid} }, false},
		{"state dir from the environment", func(kid string) []string { return []string{kid} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env {
				t.Setenv("TSIDP_STATE_DIR", dir)
			}
			key, kid := dashKeyPEM(t)
			file := filepath.Join(t.TempDir(), "key.pem")
			os.WriteFile(file, key, 0o600)
			stdout, stderr, code := runCLI(t, "keys", "import", "--state-dir", dir, "--alg", "ES256", file)
			if code != 0 || !strings.Contains(stdout, "imported ES256 key "+kid) {
				t.Fatalf("import: exit %d, stdout %q, stderr %q", code, stdout, stderr)
			}
			args := append([]string{"keys", "revoke"}, tc.args(kid)...)
			stdout, stderr, code = runCLI(t, args...)
			if code != 0 || !strings.Contains(stdout, "revoked "+kid) {
				t.Fatalf("tsidp %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, stdout, stderr)
			}
			stdout, _, _ = runCLI(t, "keys", "list", "--json", "--state-dir", dir)
			if !strings.Contains(stdout, `"kid": "`+kid+`",`) || !regexp.MustCompile(`"kid": "`+regexp.QuoteMeta(kid)+`",\s+"algorithm": "ES256",\s+"state": "revoked"`).MatchString(stdout) {
				t.Errorf("after revoking %s:\n%s", kid, stdout)
			}
		})
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus", "x"}, "flag provided but not defined: -bogus (see tsidp keys revoke --help)"},
		{[]string{"--state-dir", dir, "-not-a-kid"}, "flag provided but not defined: -not-a-kid (see tsidp keys revoke --help)"},
		{[]string{"--state-dir"}, "flag --state-dir needs a value"},
		{[]string{"--state-dir", dir, "a", "b"}, `want exactly one argument, got also "b"`},
	} {
		stdout, stderr, code := runCLI(t, append([]string{"keys", "revoke"}, tc.args...)...)
		if code == 0 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("keys revoke %q: exit %d, stdout %q, stderr %q; want %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	stdout, stderr, code := runCLI(t, "keys", "revoke", "--help")
	if code != 0 || !strings.Contains(stdout, "tsidp keys revoke [flags] KID") || !strings.Contains(stdout, "--state-dir") {
		t.Errorf("keys revoke --help: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestClientsSecret: a fresh 256-bit secret each time, with the hash the
// configuration takes.
func TestClientsSecret(t *testing.T) {
	var out [2]string
	for i := range out {
		var stdout bytes.Buffer
		app := newApp()
		app.Writer = &stdout
		if err := app.Run([]string{"tsidp", "clients", "secret"}); err != nil {
			t.Fatal(err)
		}
		out[i] = stdout.String()
	}
	var sec, hash string
	if _, err := fmt.Sscanf(out[0], "client_secret: %s\nsecret_sha256: %s\n", &sec, &hash); err != nil {
		t.Fatalf("output %q: %v", out[0], err)
	}
	if len(sec) != 43 || hash != clients.SecretHash(sec) || out[0] == out[1] {
		t.Errorf("outputs %q and %q", out[0], out[1])
	}
}
