package integration

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/tsidp/tsidp/pkg/tailnet"
)

// verifierProg is one verifier program from integration/verifiers: a JWT
// library in another language, run as
//
//	<argv...> ISSUER AUDIENCE ALG TOKEN
//
// It exits 0 and prints the claims as JSON when the token is valid, 1 with a
// one-line reason when it is not, and 2 when the library cannot verify ALG.
type verifierProg struct {
	name     string // subtest name
	language string // docs/verifying.md table: Language
	library  string // docs/verifying.md table: Library
	file     string // under integration/, also shown in docs/verifying.md
	eddsa    bool   // whether the library verifies EdDSA
	// libcClock: the program reads the time through libc, so that
	// faketime can run it with a clock that lags.
	libcClock bool
	// futureIAT: the library refuses a token whose iat is ahead of its
	// clock, so a verifier whose clock lags needs a leeway whatever nbf
	// says (docs/verifying.md).
	futureIAT bool

	// prepare checks the program's dependencies, builds it if needed, and
	// returns the command line to run it with. A missing part fails the
	// test (never a skip), naming what to install.
	prepare func(file, tmp string) ([]string, error)
}

var verifierProgs = []verifierProg{
	{
		name: "python-pyjwt", libcClock: true, futureIAT: true, language: "Python", library: "PyJWT (`PyJWKClient`)", eddsa: true,
		file: "verifiers/python/pyjwt_verify.py", prepare: pythonProg("jwt", "python3-jwt"),
	},
	{
		name: "python-jwcrypto", libcClock: true, language: "Python", library: "jwcrypto", eddsa: true,
		file: "verifiers/python/jwcrypto_verify.py", prepare: pythonProg("jwcrypto", "python3-jwcrypto"),
	},
	{
		name: "python-authlib", libcClock: true, language: "Python", library: "Authlib (`authlib.jose`)", eddsa: true,
		file: "verifiers/python/authlib_verify.py", prepare: pythonProg("authlib.jose", "python3-authlib"),
	},
	{
		name: "node-jose", libcClock: true, language: "Node.js", library: "jose", eddsa: true,
		file: "verifiers/node/jose_verify.mjs", prepare: nodeProg("jose"),
	},
	{
		name: "node-jsonwebtoken", libcClock: true, language: "Node.js", library: "jsonwebtoken + jwks-rsa", eddsa: false,
		file: "verifiers/node/jsonwebtoken_verify.mjs", prepare: nodeProg("jsonwebtoken", "jwks-rsa"),
	},
	{
		name: "perl-crypt-jwt", libcClock: true, language: "Perl", library: "Crypt::JWT", eddsa: true,
		file: "verifiers/perl/crypt_jwt_verify.pl", prepare: perlProg,
	},
	{
		name: "java-jdk", language: "Java 17", library: "the JDK alone (`java.net.http`, JCA)", eddsa: true,
		file: "verifiers/java/Verify.java", prepare: javaProg,
	},
	{
		name: "go-oidc", language: "Go", library: "github.com/coreos/go-oidc/v3", eddsa: true,
		file: "verifiers/go/main.go", prepare: goProg,
	},
}

func pythonProg(module, debPackage string) func(file, tmp string) ([]string, error) {
	return func(file, _ string) ([]string, error) {
		// Debian's python3 sees Debian's packages; a python3 earlier on
		// PATH (pyenv and the like) may not.
		const python = "/usr/bin/python3"
		if out, err := exec.Command(python, "-c", "import "+module).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s cannot import %s (apt-get install %s): %v\n%s", python, module, debPackage, err, out)
		}
		return []string{python, file}, nil
	}
}

func nodeProg(modules ...string) func(file, tmp string) ([]string, error) {
	return func(file, _ string) ([]string, error) {
		node, err := exec.LookPath("node")
		if err != nil {
			return nil, fmt.Errorf("node is not installed (apt-get install nodejs npm): %v", err)
		}
		// jose 6 and jwks-rsa 4 need Node 20.19 or later (Debian 12's nodejs is 18).
		out, err := exec.Command(node, "-p", "process.versions.node").Output()
		var major, minor int
		if _, serr := fmt.Sscanf(string(out), "%d.%d", &major, &minor); err != nil || serr != nil || major < 20 || major == 20 && minor < 19 {
			return nil, fmt.Errorf("node %s: need Node 20.19 or later for jose 6 (err %v)", bytes.TrimSpace(out), err)
		}
		for _, m := range modules {
			if _, err := os.Stat(filepath.Join("verifiers/node/node_modules", m, "package.json")); err != nil {
				return nil, fmt.Errorf("npm package %s is missing: run `npm ci` in integration/verifiers/node (scripts/test.sh does): %v", m, err)
			}
		}
		return []string{node, file}, nil
	}
}

func perlProg(file, _ string) ([]string, error) {
	if out, err := exec.Command("perl", "-MCrypt::JWT", "-MHTTP::Tiny", "-MJSON::PP", "-e1").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("perl cannot load Crypt::JWT (apt-get install libcrypt-jwt-perl): %v\n%s", err, out)
	}
	return []string{"perl", file}, nil
}

func javaProg(file, tmp string) ([]string, error) {
	if out, err := exec.Command("javac", "-d", tmp, file).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("javac %s (apt-get install default-jdk-headless): %v\n%s", file, err, out)
	}
	// A short-lived JVM: skip the optimising compiler, use the serial GC.
	return []string{"java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", tmp, "Verify"}, nil
}

func goProg(file, tmp string) ([]string, error) {
	bin := filepath.Join(tmp, "go-oidc-verify")
	if out, err := exec.Command("go", "build", "-o", bin, "./"+filepath.Dir(file)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %v\n%s", file, err, out)
	}
	return []string{bin}, nil
}

// prepareVerifiers prepares every verifier program in parallel and returns
// their command lines, or fails the test.
func prepareVerifiers(t *testing.T) [][]string {
	t.Helper()
	argvs := make([][]string, len(verifierProgs))
	errs := make([]error, len(verifierProgs))
	var wg sync.WaitGroup
	for i, p := range verifierProgs {
		tmp := t.TempDir()
		wg.Go(func() { argvs[i], errs[i] = p.prepare(p.file, tmp) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return argvs
}

// verifierRun is the outcome of one verifier run.
type verifierRun struct {
	code int
	out  string // stdout, trimmed: claims JSON or the one-line reason
	err  string // stderr
}

func runVerifier(ctx context.Context, argv []string, issuer, audience, alg, token string) (verifierRun, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], issuer, audience, alg, token)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := verifierRun{out: strings.TrimSpace(stdout.String()), err: strings.TrimSpace(stderr.String())}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	case err != nil:
		return r, fmt.Errorf("%v: %v (stderr: %s)", argv, err, r.err)
	}
	return r, nil
}

// verifierCase is one token per algorithm put to every verifier, and what
// must happen.
type verifierCase struct {
	name     string
	tokens   map[string]string // by algorithm
	audience string            // the audience to require; "" for the token's own
	reason   *regexp.Regexp    // a rejection's reason must match; nil: must be accepted
	// lag, if set, runs the verifiers that read libc's clock under
	// faketime, with their clock this far behind tsidp's; the others do
	// not take part.
	lag time.Duration
}

// TestVerifiers verifies RS256, ES256 and EdDSA tokens from tsidp (serving
// beside a real tailscaled, fetched by a tailnet node) with JWT libraries in
// other languages, each resolving keys through discovery and the JWKS over
// HTTP, and checks that each rejects a tampered signature, forged claims, a
// wrong audience, an expired token and a token whose key was revoked.
func TestVerifiers(t *testing.T) {
	needTailscaleBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t0 := time.Now()
	argvs := prepareVerifiers(t)
	t.Logf("verifiers prepared in %v", time.Since(t0).Round(time.Millisecond))

	rt := startRealTailnet(ctx, t)
	caller, err := rt.control.StartNode(ctx, tailnet.NodeConfig{Hostname: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	srv := rt.startTSIDP(t)
	hc := caller.HTTPClient()

	algs := []string{"RS256", "ES256", "EdDSA"}
	valid, short := map[string]string{}, map[string]string{}
	var shortExp time.Time // the latest exp of the ttl=10 tokens
	for _, alg := range algs {
		short[alg] = mustToken(t, hc, srv.tailnet, url.Values{"audience": {algAudience[alg]}, "ttl": {"10"}})
		valid[alg] = mustToken(t, hc, srv.tailnet, url.Values{"audience": {algAudience[alg]}})
		c := payloadOf(t, short[alg])
		if c["exp"].(float64)-c["iat"].(float64) != 10 {
			t.Fatalf("ttl=10 token: exp %v, iat %v", c["exp"], c["iat"])
		}
		shortExp = time.Unix(int64(c["exp"].(float64)), 0)
	}

	// Library messages differ; each reason must still name the failure.
	badSig := regexp.MustCompile(`(?i)signature|verif`)
	run := func(t *testing.T, cases ...verifierCase) {
		t.Helper()
		for i, p := range verifierProgs {
			for _, alg := range algs {
				for _, c := range cases {
					if c.lag != 0 && !p.libcClock {
						continue
					}
					t.Run(fmt.Sprintf("%s/%s/%s", p.name, alg, c.name), func(t *testing.T) {
						t.Parallel()
						tok, want := c.tokens[alg], cmp.Or(c.audience, algAudience[alg])
						argv := argvs[i]
						if c.lag != 0 {
							argv = append([]string{"faketime", "-f", fmt.Sprintf("-%ds", int(c.lag.Seconds()))}, argv...)
						}
						r, err := runVerifier(ctx, argv, srv.issuer, want, alg, tok)
						if err != nil {
							t.Fatal(err)
						}
						t.Logf("exit %d: %.200s", r.code, r.out)
						reason := c.reason
						if c.lag != 0 && p.futureIAT {
							reason = regexp.MustCompile(`\(iat\)`)
						}
						switch {
						case alg == "EdDSA" && !p.eddsa:
							// The library cannot verify EdDSA at all: a good
							// token says so (exit 2), and no token passes.
							if (reason == nil && r.code != 2) || r.code == 0 {
								t.Errorf("%s verified by a library without EdDSA? exit %d: %s (stderr %s)", c.name, r.code, r.out, r.err)
							}
						case reason == nil:
							if r.code != 0 {
								t.Fatalf("rejected a valid token: exit %d: %s (stderr %s)", r.code, r.out, r.err)
							}
							var got map[string]any
							if err := json.Unmarshal([]byte(r.out), &got); err != nil {
								t.Fatalf("claims output is not JSON: %v: %q", err, r.out)
							}
							if want := payloadOf(t, tok); !reflect.DeepEqual(got, want) {
								t.Errorf("claims:\n got %v\nwant %v", got, want)
							}
						default:
							if r.code != 1 || !reason.MatchString(r.out) || strings.Contains(r.out, "\n") {
								t.Errorf("exit %d, reason %q (stderr %s); want exit 1 and a one-line reason matching %v", r.code, r.out, r.err, reason)
							}
						}
					})
				}
			}
		}
	}

	tampered, forged := map[string]string{}, map[string]string{}
	for _, alg := range algs {
		tampered[alg] = tamperSignature(t, valid[alg])
		forged[alg] = forgeClaims(t, valid[alg])
	}
	t.Run("fresh", func(t *testing.T) {
		run(t,
			verifierCase{name: "valid", tokens: valid},
			verifierCase{name: "tampered-signature", tokens: tampered, reason: badSig},
			verifierCase{name: "forged-claims", tokens: forged, reason: badSig},
			verifierCase{name: "wrong-audience", tokens: valid, audience: "https://other.example", reason: regexp.MustCompile(`(?i)aud`)},
			// A verifier whose clock runs a minute behind tsidp's, with
			// no leeway configured, still accepts a fresh token: nbf is
			// backdated by the clock skew (2m here). With nbf == iat all
			// six refused one even 5 s behind. (A minute, not 5 s: the
			// token must still be in the lagging clock's future when a
			// loaded machine gets round to running the verifier, or
			// PyJWT's iat check would pass by chance.)
			verifierCase{name: "clock-behind", tokens: valid, lag: time.Minute},
		)
	})

	// An RFC 9068 resource server (oauth4webapi's validateJwtAccessToken)
	// accepts the tokens of an audience with token_profile rfc9068 ("typ":
	// "at+jwt", client_id naming the caller's node), and refuses the
	// plain JWTs of the others, as it should.
	t.Run("rfc9068", func(t *testing.T) {
		argv, err := nodeProg("oauth4webapi")("verifiers/node/oauth4webapi_verify.mjs", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		at := mustToken(t, hc, srv.tailnet, url.Values{"audience": {"https://rfc9068.example"}})
		r, err := runVerifier(ctx, argv, srv.issuer, "https://rfc9068.example", "ES256", at)
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if r.code != 0 || json.Unmarshal([]byte(r.out), &c) != nil || !strings.HasPrefix(fmt.Sprint(c["client_id"]), "node:") {
			t.Errorf("RFC 9068 token: exit %d: %s (stderr %s)", r.code, r.out, r.err)
		}
		r, err = runVerifier(ctx, argv, srv.issuer, algAudience["ES256"], "ES256", valid["ES256"])
		if err != nil {
			t.Fatal(err)
		}
		if r.code != 1 || !strings.Contains(r.out, `"typ"`) {
			t.Errorf("plain JWT at an RFC 9068 resource server: exit %d: %s", r.code, r.out)
		}
	})

	// The ttl=10 tokens were valid for 10 s; wait them out (every verifier
	// here allows no leeway; go-oidc wants now > exp, at 1 s resolution) and
	// put them to all verifiers at once.
	if d := time.Until(shortExp.Add(1100 * time.Millisecond)); d > 0 {
		t.Logf("waiting %v for the ttl=10 tokens to expire", d.Round(time.Millisecond))
		time.Sleep(d)
	}
	t.Run("expired", func(t *testing.T) {
		run(t, verifierCase{name: "expired", tokens: short, reason: regexp.MustCompile(`(?i)expire|\bexp\b`)})
	})

	// A long-running go-oidc verifier that has seen the ES256 key: see
	// "revocation" in docs/verifying.md.
	oidcCtx := oidc.ClientContext(ctx, httpClient())
	provider, err := oidc.NewProvider(oidcCtx, srv.issuer)
	if err != nil {
		t.Fatal(err)
	}
	longLived := provider.Verifier(&oidc.Config{ClientID: algAudience["ES256"], SupportedSigningAlgs: []string{"ES256"}})
	if _, err := longLived.Verify(oidcCtx, valid["ES256"]); err != nil {
		t.Fatal(err)
	}

	// Revoke every key that signed a valid token, through the running
	// daemon's admin socket; it leaves the JWKS at once.
	fresh := map[string]string{}
	for _, alg := range algs {
		kid := kidOf(t, valid[alg])
		out, errOut, code := runTSIDP(t, "keys", "revoke", "--state-dir", srv.stateDir, kid)
		if code != 0 || !strings.Contains(out, "revoked "+kid) {
			t.Fatalf("keys revoke %s: exit %d: %s%s", kid, code, out, errOut)
		}
		if jwks := getBody(t, srv.issuer+"/.well-known/jwks.json"); strings.Contains(jwks, kid) {
			t.Fatalf("revoked kid %s is still in the JWKS", kid)
		}
		// The next key, published in advance, signs from now on.
		fresh[alg] = mustToken(t, hc, srv.tailnet, url.Values{"audience": {algAudience[alg]}})
		if kidOf(t, fresh[alg]) == kid {
			t.Fatalf("%s: still signing with revoked key %s", alg, kid)
		}
		verifyGoJose(t, httpClient(), srv.issuer, fresh[alg], alg, algAudience[alg])
	}

	// go-oidc keeps verifying with a cached key whatever the JWKS says now.
	// Tokens signed by the next key don't make it refetch: tsidp published
	// that key in advance, so it is cached too. Only a kid it has never seen
	// does.
	if _, err := longLived.Verify(oidcCtx, valid["ES256"]); err != nil {
		t.Errorf("long-running go-oidc verifier: %v; docs/verifying.md says it accepts a revoked key it has cached", err)
	}
	if _, err := longLived.Verify(oidcCtx, fresh["ES256"]); err != nil {
		t.Errorf("long-running go-oidc verifier, token signed by the next key: %v", err)
	}
	if _, err := longLived.Verify(oidcCtx, valid["ES256"]); err != nil {
		t.Errorf("long-running go-oidc verifier after a next-key token: %v; docs/verifying.md says it still accepts the revoked key", err)
	}
	if _, err := longLived.Verify(oidcCtx, withKID(t, valid["ES256"], "never-published")); err == nil {
		t.Fatal("go-oidc accepted a token naming an unknown kid")
	}
	// go-oidc releases the waiting Verify before it stores the refetched
	// keys, so the new key set can take a moment to be in use.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := longLived.Verify(oidcCtx, valid["ES256"]); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("long-running go-oidc verifier still accepts the revoked key 5s after an unknown kid made it refetch the JWKS")
			break
		}
	}

	// The same tokens verified in "fresh": only the JWKS changed. Most
	// libraries say the kid is unknown; go-oidc, finding no key with that
	// kid, says the signature does not verify.
	t.Run("revoked", func(t *testing.T) {
		run(t, verifierCase{name: "revoked-kid", tokens: valid, reason: regexp.MustCompile(`(?i)kid|key|signature`)})
	})
}

// payloadOf decodes a JWS's payload without verifying it.
func payloadOf(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// tamperSignature flips one bit in the middle of the signature.
func tamperSignature(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	sig[len(sig)/2] ^= 0x01
	parts[2] = base64.RawURLEncoding.EncodeToString(sig)
	return strings.Join(parts, ".")
}

// forgeClaims keeps header and signature and swaps in claims naming
// another subject: what an attacker holding a valid token would try.
func forgeClaims(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	claims := payloadOf(t, token)
	claims["sub"] = "user:1"
	claims["login_name"] = "admin@example.com"
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

// withKID returns token with its header's kid replaced (and so an invalid
// signature).
func withKID(t *testing.T, token, kid string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr map[string]any
	if err := json.Unmarshal(b, &hdr); err != nil {
		t.Fatal(err)
	}
	hdr["kid"] = kid
	b, _ = json.Marshal(hdr)
	parts[0] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

// getBody GETs url and returns the body of a 200 answer.
func getBody(t *testing.T, url string) string {
	t.Helper()
	res, err := httpClient().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, res.StatusCode, b.String())
	}
	return b.String()
}
