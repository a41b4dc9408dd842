// Command go-oidc-verify verifies a tsidp token with github.com/coreos/go-oidc,
// finding the key through discovery and the JWKS.
//
// usage: go-oidc-verify ISSUER AUDIENCE ALG TOKEN
//
// It prints the token's claims as JSON and exits 0 when the token is valid:
// signed with ALG by a key in the issuer's JWKS, issued by ISSUER, for
// AUDIENCE, and not expired. It exits 1 with a one-line reason when it is
// not, and 2 when go-oidc cannot verify ALG at all.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// supported are the algorithms go-oidc verifies.
var supported = map[string]bool{
	oidc.RS256: true, oidc.RS384: true, oidc.RS512: true,
	oidc.ES256: true, oidc.ES384: true, oidc.ES512: true,
	oidc.PS256: true, oidc.PS384: true, oidc.PS512: true,
	oidc.EdDSA: true,
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: go-oidc-verify ISSUER AUDIENCE ALG TOKEN")
		os.Exit(2)
	}
	issuer, audience, alg, token := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	if !supported[alg] {
		fmt.Printf("go-oidc does not support %s\n", alg)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// NewProvider reads discovery and checks that it names this issuer; the
	// verifier fetches the JWKS from its jwks_uri and picks the key by "kid".
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	verifier := provider.Verifier(&oidc.Config{
		ClientID:             audience,      // the "aud" to require
		SupportedSigningAlgs: []string{alg}, // never the token's own "alg" header
	})
	idToken, err := verifier.Verify(ctx, token)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	var claims map[string]any
	if err := idToken.Claims(&claims); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	out, _ := json.Marshal(claims)
	fmt.Println(string(out))
}
