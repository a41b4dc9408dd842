// Verifies a tsidp token with jsonwebtoken and jwks-rsa (npm), finding the
// key through discovery and the JWKS.
//
// usage: node jsonwebtoken_verify.mjs ISSUER AUDIENCE ALG TOKEN
//
// Prints the token's claims as JSON and exits 0 when the token is valid:
// signed with ALG by a key in the issuer's JWKS, issued by ISSUER, for
// AUDIENCE, and not expired. Exits 1 with a one-line reason when it is not,
// and 2 when jsonwebtoken cannot verify ALG at all (it has no EdDSA).
import jwt from 'jsonwebtoken';
import jwksClient from 'jwks-rsa';

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
const client = jwksClient({ jwksUri: discovery.jwks_uri, timeout: 10_000 });
const getKey = (header, callback) =>
  client.getSigningKey(header.kid, (err, key) => callback(err, key?.getPublicKey()));

jwt.verify(
  token,
  getKey,
  { algorithms: [alg], audience, issuer }, // algorithms: never the token's own "alg" header
  (err, payload) => {
    if (err) {
      console.log(`${err.name}: ${err.message.split('\n')[0]}`);
      // jsonwebtoken knows RSA and EC keys only: an Ed25519 key is an
      // "Unknown key type", and "EdDSA" is "not a valid algorithm".
      process.exit(/Unknown key type|is not a valid algorithm/.test(err.message) ? 2 : 1);
    }
    console.log(JSON.stringify(payload));
  },
);
