// Validates a tsidp access token as an RFC 9068 resource server does, with
// oauth4webapi (npm): validateJwtAccessToken checks "typ": "at+jwt", the
// signature through discovery and the JWKS, iss, aud, exp, and that iat,
// sub, jti and client_id are present.
//
// usage: node oauth4webapi_verify.mjs ISSUER AUDIENCE ALG TOKEN
//
// Prints the token's claims as JSON and exits 0 when the token is valid;
// exits 1 with a one-line reason when it is not.
import * as oauth from 'oauth4webapi';

const [issuer, audience, alg, token] = process.argv.slice(2);
const issuerURL = new URL(issuer);
// Plain http only for an issuer on loopback (the tests); never in production.
const opts = { [oauth.allowInsecureRequests]: issuerURL.protocol === 'http:', signal: AbortSignal.timeout(10_000) };

try {
  const as = await oauth.processDiscoveryResponse(issuerURL, await oauth.discoveryRequest(issuerURL, { ...opts, algorithm: 'oidc' }));
  const request = new Request('https://resource.example/api', { headers: { authorization: `Bearer ${token}` } });
  const claims = await oauth.validateJwtAccessToken(as, request, audience, { ...opts, signingAlgorithms: [alg] });
  console.log(JSON.stringify(claims));
} catch (e) {
  console.log(`${e.code ?? e.name}: ${e.message}`.replace(/\n/g, ' '));
  process.exit(1);
}
