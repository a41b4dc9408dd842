// Verifies a tsidp token with jose (npm), finding the key through discovery
// and the JWKS (createRemoteJWKSet).
//
// usage: node jose_verify.mjs ISSUER AUDIENCE ALG TOKEN
//
// Prints the token's claims as JSON and exits 0 when the token is valid:
// signed with ALG by a key in the issuer's JWKS, issued by ISSUER, for
// AUDIENCE, and not expired. Exits 1 with a one-line reason when it is not,
// and 2 when jose cannot verify ALG at all.
import * as jose from 'jose';

const [issuer, audience, alg, token] = process.argv.slice(2);

// Discovery says where the keys are; it must name the issuer we trust.
const res = await fetch(issuer.replace(/\/$/, '') + '/.well-known/openid-configuration', {
  signal: AbortSignal.timeout(10_000),
});
const discovery = await res.json();
if (discovery.issuer !== issuer) {
  console.log(`discovery names issuer ${discovery.issuer}, not ${issuer}`);
  process.exit(1);
}
const jwks = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));

try {
  const { payload } = await jose.jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: [alg], // never the token's own "alg" header
    requiredClaims: ['sub', 'exp', 'iat'],
  });
  console.log(JSON.stringify(payload));
} catch (e) {
  console.log(`${e.code ?? e.name}: ${e.message}`);
  process.exit(e instanceof jose.errors.JOSENotSupported ? 2 : 1);
}
